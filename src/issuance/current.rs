//! The authority in force, swapped whole on reload.

use std::sync::{Arc, RwLock};

use super::pipeline::CertificateAuthority;

/// The authority in force; a reload replaces it for every new request while requests in
/// flight finish with the one they started with.
pub struct CurrentAuthority(RwLock<Arc<CertificateAuthority>>, tokio::sync::Notify);

impl CurrentAuthority {
    pub fn new(authority: Arc<CertificateAuthority>) -> Self {
        Self(RwLock::new(authority), tokio::sync::Notify::new())
    }

    /// Resolves at the next [`CurrentAuthority::replace`] after it is enabled or first
    /// polled.
    pub fn replaced(&self) -> tokio::sync::futures::Notified<'_> {
        self.1.notified()
    }

    pub fn get(&self) -> Arc<CertificateAuthority> {
        match self.0.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn replace(&self, authority: Arc<CertificateAuthority>) {
        match self.0.write() {
            Ok(mut current) => *current = authority,
            Err(poisoned) => *poisoned.into_inner() = authority,
        }
        self.1.notify_waiters();
    }
}
