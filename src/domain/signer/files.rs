//! CA material on disk: loading Istio's `cacerts` layout (or `kubernetes.io/tls`) into a
//! [`MeshSigner`]. The only part of the signer that reads files; `cli::init` writes them.
//!
//! Istio `cacerts` layout: `ca-cert.pem` (signing certificate), `ca-key.pem` (its key),
//! `cert-chain.pem` (signing certificate up to the root), `root-cert.pem` (trust bundle).
//! `kubernetes.io/tls` layout: `tls.crt` (signing certificate, then its chain), `tls.key`,
//! `ca.crt` (trust bundle).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::material::{CaMaterial, MaterialError};
use super::MeshSigner;
use crate::domain::identity::TrustDomain;
use crate::domain::keys::{self, KeyError};
use crate::domain::signing_key::CaKey;
use rustls_pki_types::CertificateDer;

/// Why CA files could not be loaded or written. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum CaFilesError {
    #[error(
        "{dir}: found neither Istio's cacerts layout (ca-cert.pem) nor kubernetes.io/tls (tls.crt)"
    )]
    NoLayout { dir: PathBuf },
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Pem {
        path: PathBuf,
        #[source]
        source: KeyError,
    },
    #[error("{path}: holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("{dir}: {source}")]
    Invalid {
        dir: PathBuf,
        #[source]
        source: MaterialError,
    },
    #[error("{path} already exists; pass --force to replace existing keys")]
    WouldOverwrite { path: PathBuf },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating {what} failed: {reason}")]
    Generate { what: String, reason: String },
}

/// Loads and checks a mesh's CA directory; `extra_roots` are PEM files whose certificates join
/// the mesh's trust bundle. `key` is the signing key when it is held elsewhere (a token); without
/// it, the layout's key file is read.
pub fn load_signer(
    mesh: &str,
    trust_domain: TrustDomain,
    dir: &Path,
    extra_roots: &[PathBuf],
    key: Option<CaKey>,
    now: SystemTime,
) -> Result<MeshSigner, CaFilesError> {
    let mut material = load_material(dir, key)?;
    for path in extra_roots {
        material.roots.extend(certificates_required(path)?);
    }
    MeshSigner::new(mesh, trust_domain, material, now).map_err(|source| CaFilesError::Invalid {
        dir: dir.to_owned(),
        source,
    })
}

/// The trust bundle of either layout (`root-cert.pem` or `ca.crt`).
pub(crate) fn load_roots(dir: &Path) -> Result<Vec<CertificateDer<'static>>, CaFilesError> {
    match dir.join("ca-cert.pem").exists() {
        true => certificates_required(&dir.join("root-cert.pem")),
        false if dir.join("tls.crt").exists() => certificates_required(&dir.join("ca.crt")),
        false => Err(CaFilesError::NoLayout {
            dir: dir.to_owned(),
        }),
    }
}

/// Reads the files of either layout, without judging them; the key file only when no `key` is
/// given.
pub(crate) fn load_material(dir: &Path, key: Option<CaKey>) -> Result<CaMaterial, CaFilesError> {
    let signing_key = |file: &str| match key.clone() {
        Some(key) => Ok(key),
        None => read_key(&dir.join(file)),
    };
    if dir.join("ca-cert.pem").exists() {
        let signing_certificate = first_certificate(&dir.join("ca-cert.pem"))?;
        let chain_path = dir.join("cert-chain.pem");
        let chain = if chain_path.exists() {
            certificates(&chain_path)?
        } else {
            Vec::new()
        };
        Ok(CaMaterial {
            signing_certificate,
            signing_key: signing_key("ca-key.pem")?,
            chain,
            roots: certificates_required(&dir.join("root-cert.pem"))?,
        })
    } else if dir.join("tls.crt").exists() {
        let path = dir.join("tls.crt");
        let mut chain = certificates_required(&path)?;
        let signing_certificate = chain.remove(0);
        Ok(CaMaterial {
            signing_certificate,
            signing_key: signing_key("tls.key")?,
            chain,
            roots: certificates_required(&dir.join("ca.crt"))?,
        })
    } else {
        Err(CaFilesError::NoLayout {
            dir: dir.to_owned(),
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CaFilesError> {
    fs::read(path).map_err(|source| CaFilesError::Read {
        path: path.to_owned(),
        source,
    })
}

fn certificates(
    path: &Path,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, CaFilesError> {
    keys::parse_certificates_pem(&read(path)?).map_err(|source| CaFilesError::Pem {
        path: path.to_owned(),
        source,
    })
}

/// The certificates in a PEM file, at least one.
pub(crate) fn certificates_required(
    path: &Path,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, CaFilesError> {
    let found = certificates(path)?;
    if found.is_empty() {
        return Err(CaFilesError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(found)
}

fn first_certificate(
    path: &Path,
) -> Result<rustls_pki_types::CertificateDer<'static>, CaFilesError> {
    let mut found = certificates_required(path)?;
    Ok(found.remove(0))
}

fn read_key(path: &Path) -> Result<CaKey, CaFilesError> {
    keys::load_private_key_pem(&read(path)?)
        .map(CaKey::memory)
        .map_err(|source| CaFilesError::Pem {
            path: path.to_owned(),
            source,
        })
}
