//! Root rotation: which roots of a trust bundle the certificates still in use chain to.
//!
//! Every issuance record names the certificate that signed it (`intermediate_sha256`), and the
//! store remembers each signing certificate with the intermediates above it. So for any bundle
//! meshroot can say, for its unexpired certificates, which root each one chains to, and which
//! chain to none of them: a bundle without their root would break every connection they make
//! (peers verify against the bundle), so it is refused until they expire.

use std::collections::HashMap;
use std::time::SystemTime;

use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::domain::record::{Outcome, Record};

/// A signing certificate and the intermediates above it (DER), as the store remembers them.
pub(crate) type SignerChain = Vec<Vec<u8>>;

/// Unexpired certificates of one group (those chaining to a root, or to none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct InUse {
    pub certificates: u64,
    /// The latest NotAfter among them.
    pub until: Option<SystemTime>,
}

impl InUse {
    /// Adds another group's count.
    pub(crate) fn merge(&mut self, other: &InUse) {
        self.certificates += other.certificates;
        self.until = match (self.until, other.until) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    pub fn add(&mut self, not_after: SystemTime) {
        self.certificates += 1;
        self.until = Some(self.until.map_or(not_after, |until| until.max(not_after)));
    }
}

/// What the unexpired certificates of a mesh chain to, against one bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BundleUse {
    /// Per root of the bundle, in bundle order.
    pub per_root: Vec<InUse>,
    /// Certificates whose signer chains to no root of the bundle: they would stop working.
    pub stranded: InUse,
    /// Certificates whose signer is not remembered (issued before meshroot remembered
    /// signers): which root they chain to is unknown.
    pub unknown: InUse,
}

impl BundleUse {
    /// Adds the counts of `other` (another page, or another member) against the same bundle.
    pub(crate) fn merge(&mut self, other: &BundleUse) {
        if self.per_root.len() < other.per_root.len() {
            self.per_root.resize(other.per_root.len(), InUse::default());
        }
        for (mine, theirs) in self.per_root.iter_mut().zip(&other.per_root) {
            mine.merge(theirs);
        }
        self.stranded.merge(&other.stranded);
        self.unknown.merge(&other.unknown);
    }
}

/// Sorts the unexpired issued `records` by the root of `bundle` their signer chains to.
pub(crate) fn bundle_use(
    records: &[Record],
    signers: &HashMap<Vec<u8>, SignerChain>,
    bundle: &[Vec<u8>],
    now: SystemTime,
) -> BundleUse {
    let mut usage = BundleUse {
        per_root: vec![InUse::default(); bundle.len()],
        ..BundleUse::default()
    };
    // Each signer's root index, computed once.
    let mut roots_of: HashMap<&[u8], Option<usize>> = HashMap::new();
    for record in records {
        let Outcome::Issued(issued) = &record.outcome else {
            continue;
        };
        if issued.not_after <= now {
            continue;
        }
        let Some(chain) = signers.get(&issued.intermediate_sha256) else {
            usage.unknown.add(issued.not_after);
            continue;
        };
        let root = *roots_of
            .entry(issued.intermediate_sha256.as_slice())
            .or_insert_with(|| root_of(chain, bundle));
        match root.and_then(|index| usage.per_root.get_mut(index)) {
            Some(in_use) => in_use.add(issued.not_after),
            None => usage.stranded.add(issued.not_after),
        }
    }
    usage
}

/// The signers (SHA-256) whose chain leads to no root of `bundle`: the certificates they
/// signed would stop verifying.
pub(crate) fn stranded_signers(
    signers: &HashMap<Vec<u8>, SignerChain>,
    bundle: &[Vec<u8>],
) -> Vec<Vec<u8>> {
    let mut stranded: Vec<Vec<u8>> = signers
        .iter()
        .filter(|(_, chain)| root_of(chain, bundle).is_none())
        .map(|(sha, _)| sha.clone())
        .collect();
    stranded.sort();
    stranded
}

/// The index of the root in `bundle` that the top of `chain` is, or is signed by.
pub(crate) fn root_of(chain: &[Vec<u8>], bundle: &[Vec<u8>]) -> Option<usize> {
    let top = chain.last()?;
    if let Some(index) = bundle.iter().position(|root| root == top) {
        return Some(index);
    }
    let (_, top) = X509Certificate::from_der(top).ok()?;
    bundle.iter().position(|root| {
        X509Certificate::from_der(root)
            .map(|(_, root)| {
                top.issuer() == root.subject()
                    && top.verify_signature(Some(root.public_key())).is_ok()
            })
            .unwrap_or(false)
    })
}

/// A root's subject, for people.
pub(crate) fn subject_of(der: &[u8]) -> String {
    X509Certificate::from_der(der)
        .map(|(_, certificate)| certificate.subject().to_string())
        .unwrap_or_else(|_| "(unparsable certificate)".to_owned())
}

/// A certificate's NotAfter.
pub(crate) fn not_after_of(der: &[u8]) -> Option<SystemTime> {
    let (_, not_after) = validity_of(der)?;
    let seconds = u64::try_from(not_after).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(seconds))
}

/// A certificate's NotBefore and NotAfter, in Unix seconds.
pub(crate) fn validity_of(der: &[u8]) -> Option<(i64, i64)> {
    let (_, certificate) = X509Certificate::from_der(der).ok()?;
    let validity = certificate.validity();
    Some((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

/// Which step of the root rotation (`meshroot rotate plan`'s steps) a mesh is at: its bundle,
/// the certificates in use per root, the root its intermediate chains to, and the roots some
/// intermediate of the mesh ever chained to. `rotate plan` and the status page say this.
pub(crate) fn where_we_are(
    bundle: &[Vec<u8>],
    usage: &BundleUse,
    signing_root: Option<usize>,
    signed: &[usize],
) -> String {
    if usage.stranded.certificates > 0 {
        return "certificates in use chain to no root of this bundle: meshroot refuses to load \
                it (add their root back to extra_roots)"
            .to_owned();
    }
    if bundle.len() == 1 {
        return "one root: to rotate it, start at step 1".to_owned();
    }
    let Some(signing) = signing_root else {
        return "the intermediate chains to no root of the bundle".to_owned();
    };
    // The other roots: older ones have signed through some intermediate of this mesh (the
    // remembered signers), newer ones never have.
    let (mut older, mut newer) = (Vec::new(), Vec::new());
    for index in (0..bundle.len()).filter(|index| *index != signing) {
        if signed.contains(&index) {
            older.push(index);
        } else {
            newer.push(index);
        }
    }
    let name = |indexes: &[usize]| {
        indexes
            .iter()
            .map(|i| format!("[{}]", i + 1))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let waiting: Vec<String> = older
        .iter()
        .filter_map(|index| {
            usage.per_root[*index].until.map(|until| {
                format!(
                    "root [{}] until {}",
                    index + 1,
                    crate::domain::clock::format_time(until)
                )
            })
        })
        .collect();
    if !waiting.is_empty() {
        format!(
            "step 5: waiting for the certificates under the old root to expire ({})",
            waiting.join("; ")
        )
    } else if !older.is_empty() {
        format!(
            "step 6: no unexpired certificate chains to root {}; it can leave the bundle",
            name(&older)
        )
    } else {
        format!(
            "step 3: the bundle holds the new root {}; switch to an intermediate under it \
             (step 4) once every proxy has the new bundle",
            name(&newer)
        )
    }
}
