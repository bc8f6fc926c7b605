//! Why signing, or the check after signing, failed.

/// Why signing or the check after signing failed. These are internal failures, never the
/// client's fault.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("no randomness for the serial number")]
    Randomness,
    #[error("the public key cannot be placed in a certificate: {0}")]
    PublicKey(#[source] rcgen::Error),
    #[error("rcgen could not build or sign the certificate: {0}")]
    Build(#[source] rcgen::Error),
    #[error("the issued certificate does not chain to the mesh roots: {0}")]
    Verify(webpki::Error),
    #[error("the issued certificate is not the leaf profile: {0}")]
    Profile(&'static str),
    #[error(
        "a leaf's signature did not verify: the signer refuses to sign until its key is loaded \
         again (a reload or restart)"
    )]
    Unhealthy,
    #[error("the issued certificate does not carry exactly the granted identity")]
    IdentityCheck,
    #[error("the issued certificate names a URI outside the name constraints of its issuer")]
    NameConstraint,
    #[error(
        "the mesh's signing certificate may not issue CA certificates (its pathLenConstraint is \
         0): give the mesh an intermediate with --path-len 1 (`meshroot rotate intermediate`)"
    )]
    PathLength,
    #[error("the issued CA certificate is not what was asked: {0}")]
    CaCheck(&'static str),
    #[error("the serving key cannot be used for TLS")]
    ServingKey,
    #[error("the signing thread ended before signing")]
    Interrupted,
    #[error("the signing key's token is unavailable")]
    KeyUnavailable,
}

impl SigningError {
    /// A failure of rcgen's signing: the token behind a [`CaKey`](crate::domain::signing_key::CaKey)
    /// (rcgen's remote-key error, which only a token key returns), or anything else.
    pub(crate) fn signing(error: rcgen::Error) -> Self {
        match error {
            rcgen::Error::RemoteKeyError => Self::KeyUnavailable,
            other => Self::Build(other),
        }
    }
}
