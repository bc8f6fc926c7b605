//! `[revocation]`: where CRLs go, how long they are valid, and how long a revoked identity is
//! refused.

use std::path::Path;
use std::time::Duration;

use super::model::{MeshConfig, RevocationConfig};
use super::raw::RawRevocation;
use super::values::duration_setting;
use super::values::Problems;

/// A CRL is valid at least a day, even when every leaf lives shorter.
const MIN_CRL_VALIDITY: Duration = Duration::from_secs(24 * 3600);

pub(super) fn revocation(
    raw: RawRevocation,
    meshes: &[MeshConfig],
    base: &Path,
    p: &mut Problems,
) -> RevocationConfig {
    let longest_leaf = meshes
        .iter()
        .map(|mesh| mesh.max_ttl)
        .max()
        .unwrap_or(super::model::DEFAULT_MAX_TTL);
    let default_validity = longest_leaf.max(MIN_CRL_VALIDITY);
    let crl_validity = duration_setting(
        raw.crl_validity.as_deref(),
        default_validity,
        "revocation.crl_validity",
        p,
    );
    if crl_validity < longest_leaf {
        p.add(
            "revocation.crl_validity".into(),
            format!(
                "{}s is shorter than the longest leaf lifetime ({}s, a mesh's max_ttl): after an \
                 intermediate rotation its last CRL would lapse while its leaves are still valid",
                crl_validity.as_secs(),
                longest_leaf.as_secs()
            ),
        );
    }
    if let Some(url) = &raw.crl_url {
        let valid = (url.starts_with("http://") || url.starts_with("https://"))
            && url.len() > "https://".len()
            && !url.contains(char::is_whitespace);
        if !valid {
            p.add(
                "revocation.crl_url".into(),
                format!("{url:?} is not an http:// or https:// URL"),
            );
        }
    }
    let block_for = raw
        .block_for
        .as_deref()
        .map(|text| duration_setting(Some(text), Duration::ZERO, "revocation.block_for", p));
    RevocationConfig {
        crl_file: raw.crl_file.map(|file| base.join(file)),
        crl_validity,
        extra_crls: raw
            .extra_crls
            .unwrap_or_default()
            .into_iter()
            .map(|file| base.join(file))
            .collect(),
        crl_url: raw.crl_url,
        block_for: block_for.filter(|d| !d.is_zero()),
        configmap: raw.configmap.unwrap_or(true),
    }
}
