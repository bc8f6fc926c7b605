//! Who may do what on the admin API (off loopback, over mutual TLS): the access model.
//!
//! | role | proven by | may |
//! |---|---|---|
//! | reader | an identity in `admin.allowed_identities`, through the identity anchors | list, show, watch, stats, proofs, checkpoints, root use, `/ui` |
//! | revoker | an identity in `admin.revokers`, through the identity anchors | what a reader may, and revoke, block and lift blocks |
//! | member | the member identity (`replicas.identity`) by [`verify_member`]'s rule | everything, and what only members say to each other (a revocation to record as gathered, a checkpoint to keep) |
//!
//! Every role's certificate is checked against the revocations in force at every request, so
//! a revoked certificate loses every right at once, on every replica its revocation reached
//! (a revocation is applied on every member before `revoke` answers).

use std::time::SystemTime;

use rustls_pki_types::CertificateDer;

use super::client_cert::{refuse_revoked, spiffe_identity, verify_member, IdentityAnchors, Usage};
use super::AuthnError;
use crate::domain::identity::SpiffeId;
use crate::domain::revocation::Revocations;

/// What a request on the admin API asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// Queries, proofs, checkpoints, the status page.
    Read,
    /// Revoke, block, lift a block.
    Revoke,
    /// What only members say to each other.
    Member,
}

/// The role a client certificate proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Reader,
    Revoker,
    Member,
}

impl Role {
    pub fn may(self, right: Right) -> bool {
        matches!(
            (self, right),
            (Role::Member, _)
                | (Role::Revoker, Right::Read | Right::Revoke)
                | (Role::Reader, Right::Read)
        )
    }
}

/// Who holds which role (`[admin]`, `[replicas]`).
#[derive(Debug, Clone, Default)]
pub(crate) struct AdminRoles {
    /// `admin.allowed_identities`.
    pub readers: Vec<String>,
    /// `admin.revokers`.
    pub revokers: Vec<String>,
    /// `replicas.identity`, with `[replicas]`.
    pub member: Option<SpiffeId>,
}

/// What judges a certificate: the authority in force's anchors and revocations, at `now`.
pub(crate) struct Judges<'a> {
    /// The issuers authorized per trust domain (readers and revokers).
    pub anchors: &'a IdentityAnchors,
    /// meshroot's own signing intermediates of its primary mesh (members).
    pub member_anchors: &'a IdentityAnchors,
    pub revocations: &'a Revocations,
    pub now: SystemTime,
}

/// Why a client certificate gets no admin role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AdminRefusal {
    #[error("no client certificate")]
    NoCertificate,
    #[error(transparent)]
    Certificate(#[from] AuthnError),
    #[error("{0} holds no admin role")]
    NotAllowed(String),
    #[error("{identity} may not {right:?}")]
    NotPermitted { identity: String, right: Right },
}

impl AdminRefusal {
    /// A stable, machine-readable reason for the log.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoCertificate => "no-client-certificate",
            Self::Certificate(error) => error.reason(),
            Self::NotAllowed(_) => "identity-not-allowed",
            Self::NotPermitted { .. } => "right-not-granted",
        }
    }
}

/// The identity and role a presented chain (leaf first) proves, if it may use `right`.
pub(crate) fn authorize(
    chain: &[CertificateDer<'_>],
    roles: &AdminRoles,
    judges: &Judges<'_>,
    right: Right,
) -> Result<(SpiffeId, Role), AdminRefusal> {
    let Some(leaf) = chain.first() else {
        return Err(AdminRefusal::NoCertificate);
    };
    let identity = spiffe_identity(leaf)?;
    let role = if roles.member.as_ref() == Some(&identity) {
        // The member identity is proven only by the member rule, never by the wider anchors
        // (a cluster intermediate or a CSR-API certificate cannot stand in for a member).
        verify_member(
            leaf,
            &identity,
            judges.member_anchors,
            judges.revocations,
            judges.now,
            Usage::Client,
        )?;
        Role::Member
    } else {
        let name = identity.to_string();
        let role = if roles.revokers.contains(&name) {
            Role::Revoker
        } else if roles.readers.contains(&name) {
            Role::Reader
        } else {
            return Err(AdminRefusal::NotAllowed(name));
        };
        judges
            .anchors
            .verify(chain, judges.now)
            .map_err(AdminRefusal::Certificate)?;
        refuse_revoked(leaf, judges.revocations)?;
        role
    };
    if !role.may(right) {
        return Err(AdminRefusal::NotPermitted {
            identity: identity.to_string(),
            right,
        });
    }
    Ok((identity, role))
}
