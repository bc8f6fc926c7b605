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

use rcgen::KeyPair;

use super::material::{CaMaterial, MaterialError};
use super::MeshSigner;
use crate::domain::identity::TrustDomain;
use crate::domain::keys::{self, KeyError};

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
/// the mesh's trust bundle.
pub fn load_signer(
    mesh: &str,
    trust_domain: TrustDomain,
    dir: &Path,
    extra_roots: &[PathBuf],
    now: SystemTime,
) -> Result<MeshSigner, CaFilesError> {
    let mut material = load_material(dir)?;
    for path in extra_roots {
        material.roots.extend(certificates_required(path)?);
    }
    MeshSigner::new(mesh, trust_domain, material, now).map_err(|source| CaFilesError::Invalid {
        dir: dir.to_owned(),
        source,
    })
}

/// Reads the files of either layout, without judging them.
pub(crate) fn load_material(dir: &Path) -> Result<CaMaterial, CaFilesError> {
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
            signing_key: key(&dir.join("ca-key.pem"))?,
            chain,
            roots: certificates_required(&dir.join("root-cert.pem"))?,
        })
    } else if dir.join("tls.crt").exists() {
        let path = dir.join("tls.crt");
        let mut chain = certificates_required(&path)?;
        let signing_certificate = chain.remove(0);
        Ok(CaMaterial {
            signing_certificate,
            signing_key: key(&dir.join("tls.key"))?,
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

fn key(path: &Path) -> Result<KeyPair, CaFilesError> {
    keys::load_private_key_pem(&read(path)?).map_err(|source| CaFilesError::Pem {
        path: path.to_owned(),
        source,
    })
}
