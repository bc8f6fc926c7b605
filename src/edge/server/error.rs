//! Why the server could not start, stopped with an error, or refused a reload; the exit codes of
//! `meshroot serve`.

use std::net::SocketAddr;

use crate::adapters::authn::jwt::JwksError;
use crate::adapters::kubernetes::ClusterSetupError;
use crate::adapters::store::StoreError;
use crate::domain::signer::files::CaFilesError;
use crate::issuance::IssueError;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reading the revocation records: {0}")]
    Revocations(String),
    #[error("revocation: {0}")]
    Crl(String),
    #[error("mesh {mesh}: {source}")]
    CaMaterial {
        mesh: String,
        #[source]
        source: CaFilesError,
    },
    #[error("mesh {mesh}: its signing key in a PKCS#11 token: {source}")]
    Token {
        mesh: String,
        #[source]
        source: crate::adapters::pkcs11::Pkcs11Error,
    },
    #[error("mesh {mesh}: token issuer {issuer}: {source}")]
    Jwks {
        mesh: String,
        issuer: String,
        #[source]
        source: JwksError,
    },
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("cannot issue meshroot's serving certificate: {0}")]
    ServingCertificate(#[source] IssueError),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("mesh {mesh}: cluster {cluster:?}: {source}")]
    Cluster {
        mesh: String,
        cluster: String,
        #[source]
        source: ClusterSetupError,
    },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error(transparent)]
    AuditKey(#[from] crate::adapters::config::AuditKeyError),
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("the server task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("reading the issuance log: {0}")]
    Log(#[from] crate::adapters::store::AuditError),
    #[error(
        "the record store failed while serving ({0}); meshroot stopped issuing and exits so its \
         supervisor restarts it: it serves again once the store can write (a full disk: free \
         space or grow the volume)"
    )]
    StoreFailed(StoreError),
    #[error("shut down, but {0} by the end of shutdown_grace")]
    ShutdownIncomplete(String),
    #[error("{0}")]
    Gate(#[from] super::replicas::GateRefusal),
    #[error(
        "mesh {mesh}: the trust bundle drops the root that {certificates} unexpired certificates \
         chain to (the last expires {until}); keep that root in root-cert.pem or extra_roots until \
         then, or set force_root_removal = true for this mesh"
    )]
    RootsInUse {
        mesh: String,
        certificates: u64,
        until: String,
    },
}

impl ServeError {
    /// The process exit code `meshroot serve` ends with for this error (the exit
    /// codes in the README, below the command list).
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            // EX_TEMPFAIL: restart later; it will work once the disk has space.
            Self::StoreFailed(_) => EXIT_STORE_FAILED,
            Self::ShutdownIncomplete(_) => EXIT_SHUTDOWN_INCOMPLETE,
            // EX_UNAVAILABLE: the token (or its module) is missing; start again once it is back.
            Self::Token { source, .. } if source.is_unavailable() => EXIT_TOKEN_UNAVAILABLE,
            Self::AuditKey(error) if error.is_unavailable() => EXIT_TOKEN_UNAVAILABLE,
            _ => 1,
        }
    }
}

/// `meshroot serve` could not start: a CA key's token (or its PKCS#11 module) is missing.
pub const EXIT_TOKEN_UNAVAILABLE: u8 = 69;
/// `meshroot serve` stopped because its record store could not write.
pub const EXIT_STORE_FAILED: u8 = 75;
/// `meshroot serve` stopped on a signal, but its last checkpoint or final flush was not written
/// within `shutdown_grace`.
pub const EXIT_SHUTDOWN_INCOMPLETE: u8 = 3;

/// Why a reload was refused (the previous configuration keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] crate::adapters::config::ConfigError),
    #[error("{0}")]
    Build(#[from] ServeError),
}
