//! How a command fails: the message it prints and the exit code it ends with.

use crate::adapters::config::ConfigError;

/// Exit code for configuration and usage errors (sysexits EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

/// A failed command: what to print, and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    pub(super) fn usage(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: EXIT_USAGE,
        }
    }

    pub(super) fn runtime(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 1,
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(error: ConfigError) -> Self {
        Self::usage(error.to_string())
    }
}
