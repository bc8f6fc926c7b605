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
