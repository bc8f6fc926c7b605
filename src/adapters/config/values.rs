//! Checks of single values shared by the sections of the file: durations, names, cluster
//! access.

use std::path::Path;
use std::time::Duration;

use super::model::{ClusterAccess, Problem};
use crate::domain::clock::parse_duration;

/// The problems found so far, each with its key.
#[derive(Debug, Default)]
pub(super) struct Problems(pub(super) Vec<Problem>);

impl Problems {
    pub(super) fn add(&mut self, key: String, message: String) {
        self.0.push(Problem { key, message });
    }
}

/// `kubeconfig` (+ `context`) or `in_cluster = true`: exactly one of them.
pub(super) fn cluster_access(
    kubeconfig: Option<String>,
    context: Option<String>,
    in_cluster: bool,
    base: &Path,
    key: &str,
    problems: &mut Problems,
) -> ClusterAccess {
    match (kubeconfig, in_cluster) {
        (Some(path), false) => ClusterAccess::Kubeconfig {
            path: base.join(path),
            context,
        },
        (None, true) => ClusterAccess::InCluster,
        (Some(_), true) => {
            problems.add(
                key.to_owned(),
                "give either kubeconfig or in_cluster = true, not both".into(),
            );
            ClusterAccess::InCluster
        }
        (None, false) => {
            problems.add(
                key.to_owned(),
                "a kubeconfig file, or in_cluster = true, is required".into(),
            );
            ClusterAccess::InCluster
        }
    }
}

pub(super) fn duration_setting(
    text: Option<&str>,
    default: Duration,
    key: &str,
    problems: &mut Problems,
) -> Duration {
    match text {
        None => default,
        Some(text) => match parse_duration(text) {
            Some(d) if !d.is_zero() && d <= crate::domain::clock::MAX_DURATION => d,
            _ => {
                problems.add(
                    key.to_owned(),
                    format!(
                        "{text:?} is not a positive duration of at most 100 years, like \"24h\", \"7d\", \"90m\""
                    ),
                );
                default
            }
        },
    }
}

pub(super) fn is_mesh_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// RFC 1123 host names (letters, digits, '-', dot-separated labels of 1–63 characters), whose
/// last label is not all digits (RFC 1123 §2.1: `10.0.0.256` is neither a name nor an address).
pub fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && !name
            .rsplit('.')
            .next()
            .is_some_and(|last| last.chars().all(|c| c.is_ascii_digit()))
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}
