//! The PKCS#11 modules of this process: each loaded and initialised once (`C_Initialize` may
//! be called only once per module), shared by every key of the module, and initialised again
//! when a token went away, to find it when it returns.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard};
use std::time::Instant;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};

/// The module's context (one per module, initialised once, shared by every key of the module),
/// or why it cannot be loaded or initialised.
pub(super) fn context(module: &Path) -> Result<Pkcs11, String> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut contexts = CONTEXTS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(context) = contexts.get(module) {
        return Ok(context.clone());
    }
    let context = Pkcs11::new(module).map_err(|e| e.to_string())?;
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(error) => return Err(error.to_string()),
    }
    contexts.insert(module.to_owned(), context.clone());
    Ok(context)
}

/// What the keys of one module share: a gate that keeps `C_Finalize` away from every other call
/// (a module's state is freed by it: SoftHSM ended the process when a signing thread was
/// inside it), and the generation of the module's initialisation, so sessions opened before
/// the last one are never used or closed again (their handles may name another key's new
/// session now).
#[derive(Debug, Default)]
pub(crate) struct ModuleState {
    gate: RwLock<()>,
    generation: AtomicU64,
    last_reinitialized: Mutex<Option<Instant>>,
}

impl ModuleState {
    /// The state of `module`'s keys (one per module path in this process).
    pub(super) fn of(module: &Path) -> Arc<Self> {
        static STATES: OnceLock<Mutex<HashMap<PathBuf, Arc<ModuleState>>>> = OnceLock::new();
        STATES
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(module.to_owned())
            .or_default()
            .clone()
    }

    /// Held while calling into the module (shared: calls run side by side).
    pub(super) fn using(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The current initialisation's generation.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Finalises and initialises the module again, at most every [`REINITIALIZE_EVERY`], while
    /// no other call is inside it: a module lists its tokens when it is initialised (SoftHSM,
    /// and network HSM clients after a lost connection), so a token that comes back is seen
    /// only by a new initialisation. Every session of the module ends with it; the keys open
    /// new ones. Must not be called while holding [`using`](Self::using).
    pub(super) fn reinitialize(&self, module: &Path, context: &Pkcs11) {
        {
            let mut last = self
                .last_reinitialized
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| at.elapsed() < REINITIALIZE_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let _alone = self.gate.write().unwrap_or_else(|p| p.into_inner());
        let _ = context.clone().finalize();
        self.generation.fetch_add(1, Ordering::SeqCst);
        match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {
                tracing::info!(module = %module.display(), "PKCS#11 module initialised again, to find a returning token");
            }
            Err(error) => {
                tracing::warn!(module = %module.display(), %error, "PKCS#11 module could not be initialised again")
            }
        }
    }
}

/// How often a module is initialised again while a token stays away.
const REINITIALIZE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
