//! The PKCS#11 modules of this process: each loaded and initialised once (`C_Initialize` may
//! be called only once per module), shared by every key of the module, and initialised again
//! when a token went away, to find it when it returns.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

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

/// Finalises and initialises the module again, at most every [`REINITIALIZE_EVERY`] per module:
/// a module lists its tokens when it is initialised (SoftHSM, and network HSM clients after a
/// lost connection), so a token that comes back is seen only by a new initialisation. Every
/// session of the module ends with it; the keys open new ones.
pub(crate) fn reinitialize(module: &Path, context: &Pkcs11) {
    static LAST: OnceLock<Mutex<HashMap<PathBuf, std::time::Instant>>> = OnceLock::new();
    let mut last = LAST
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if last
        .get(module)
        .is_some_and(|at| at.elapsed() < REINITIALIZE_EVERY)
    {
        return;
    }
    last.insert(module.to_owned(), std::time::Instant::now());
    let _ = context.clone().finalize();
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {
            tracing::info!(module = %module.display(), "PKCS#11 module initialised again, to find a returning token");
        }
        Err(error) => {
            tracing::warn!(module = %module.display(), %error, "PKCS#11 module could not be initialised again")
        }
    }
}

/// How often a module is initialised again while a token stays away.
const REINITIALIZE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
