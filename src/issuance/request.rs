//! What a request asks for and what it gets: the values at the pipeline's two ends.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// A request id: in every log line of a request, its record, and any Internal error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// Ids from a sequence: a random 64-bit start, then +1 per id. Unique within a process
    /// and, with a random start, across restarts; no system call per request.
    pub(super) fn next_in(sequence: &AtomicU64) -> Self {
        let value = sequence.fetch_add(1, Ordering::Relaxed);
        Self(format!("{value:016x}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The first request id of a process: random, or (with no OS randomness) the time, which still
/// keeps ids apart across restarts.
pub(super) fn first_request_id() -> AtomicU64 {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut start = [0u8; 8];
    if SystemRandom::new().fill(&mut start).is_err() {
        start = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default()
            .to_be_bytes();
    }
    AtomicU64::new(u64::from_be_bytes(start))
}

/// What the client asked for, from the Istio CSR API request.
#[derive(Debug, Clone, Default)]
pub struct SigningRequest {
    pub csr_pem: String,
    /// `validity_duration` in seconds; <= 0 means the mesh default.
    pub validity_seconds: i64,
    /// `metadata["ImpersonatedIdentity"]`, when present.
    pub impersonated_identity: Option<String>,
}

/// A certificate handed out.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_chain: Vec<String>,
    pub identity: String,
    pub serial: Vec<u8>,
    pub sequence: u64,
}
