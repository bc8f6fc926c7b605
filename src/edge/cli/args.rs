//! Parsers of argument values shared by the commands.

use std::time::Duration;

use crate::domain::signer::constraints::DataPlane;

/// A duration argument (`1h`, `90m`, `7d`): more than zero, at most 100 years.
pub(super) fn parse_duration_arg(text: &str) -> Result<Duration, String> {
    crate::domain::clock::parse_duration(text)
        .filter(|d| !d.is_zero() && *d <= crate::domain::clock::MAX_DURATION)
        .ok_or_else(|| format!("{text:?} is not a duration of at most 100 years, like 1h or 90m"))
}

/// `--data-plane`, as clap reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DataPlaneArg {
    Sidecar,
    Ambient,
    Mixed,
}

impl From<DataPlaneArg> for DataPlane {
    fn from(arg: DataPlaneArg) -> Self {
        match arg {
            DataPlaneArg::Sidecar => Self::Sidecar,
            DataPlaneArg::Ambient => Self::Ambient,
            DataPlaneArg::Mixed => Self::Mixed,
        }
    }
}

/// `--pkcs11-*`: CA keys made in (and used from) a PKCS#11 token instead of PEM files.
#[derive(Debug, Clone, clap::Args)]
pub struct Pkcs11Args {
    /// The token (its label) to generate the CA keys in; turns the token on.
    #[arg(long, value_name = "LABEL", requires = "pkcs11_module")]
    pub pkcs11_token: Option<String>,
    /// The PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so.
    #[arg(long, value_name = "PATH")]
    pub pkcs11_module: Option<std::path::PathBuf>,
    /// A file holding the token's user PIN.
    #[arg(long, value_name = "PATH", conflicts_with = "pkcs11_pin_env")]
    pub pkcs11_pin_file: Option<std::path::PathBuf>,
    /// An environment variable holding the token's user PIN.
    #[arg(long, value_name = "NAME")]
    pub pkcs11_pin_env: Option<String>,
    /// Logged-in sessions each key keeps for signing (written into the configuration).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub pkcs11_sessions: usize,
}

impl Pkcs11Args {
    /// The settings, when a module is given; a usage error without a PIN source.
    pub(crate) fn settings(
        &self,
    ) -> Result<Option<crate::adapters::pkcs11::Pkcs11Settings>, super::failure::Failure> {
        use crate::adapters::pkcs11::{PinSource, Pkcs11Settings};
        let Some(module) = &self.pkcs11_module else {
            return Ok(None);
        };
        let pin = match (&self.pkcs11_pin_file, &self.pkcs11_pin_env) {
            (Some(file), _) => PinSource::File(std::path::absolute(file).unwrap_or(file.clone())),
            (None, Some(name)) => PinSource::Env(name.clone()),
            (None, None) => {
                return Err(super::failure::Failure::usage(
                    "--pkcs11-module needs the token's PIN: --pkcs11-pin-file or --pkcs11-pin-env",
                ))
            }
        };
        Ok(Some(Pkcs11Settings {
            module: Some(std::path::absolute(module).unwrap_or(module.clone())),
            pin,
            sessions: self.pkcs11_sessions,
        }))
    }
}
