//! `[pkcs11]`: the module and the PIN for CA keys in a token (docs/operations/keep-keys-in-a-token.md).

use std::path::Path;

use crate::adapters::pkcs11::uri::KeyUri;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::PrivatePkcs8KeyDer;

use crate::adapters::pkcs11::{PinSource, Pkcs11Settings};
use crate::domain::audit::checkpoint::AuditSigner;

use super::model::{AuditConfig, AuditKeyError, MeshConfig};
use super::raw::RawPkcs11;
use super::values::Problems;

/// Logged-in sessions a key keeps for signing, unless `sessions` says otherwise.
const DEFAULT_SESSIONS: usize = 4;

pub(super) fn pkcs11(
    raw: Option<RawPkcs11>,
    meshes: &[MeshConfig],
    audit: &AuditConfig,
    base: &Path,
    p: &mut Problems,
) -> Option<Pkcs11Settings> {
    // Every key named by URI, by the setting that names it.
    let uses: Vec<(String, KeyUri)> = meshes
        .iter()
        .enumerate()
        .filter_map(|(index, mesh)| {
            Some((
                format!("mesh[{index}].signing_key"),
                KeyUri::parse(mesh.signing_key.as_ref()?).ok()?,
            ))
        })
        .chain(
            audit
                .signing_key
                .as_deref()
                .and_then(|uri| KeyUri::parse(uri).ok())
                .map(|uri| ("audit.signing_key".to_owned(), uri)),
        )
        .collect();
    let Some(raw) = raw else {
        for (setting, _) in &uses {
            p.add(
                setting.clone(),
                "names a key in a PKCS#11 token: add a [pkcs11] section (module, and pin_file or \
                 pin_env)"
                    .into(),
            );
        }
        return None;
    };
    let pin = match (raw.pin_file, raw.pin_env) {
        (Some(file), None) => Some(PinSource::File(base.join(file))),
        (None, Some(name)) if !name.is_empty() => Some(PinSource::Env(name)),
        (None, Some(_)) => {
            p.add("pkcs11.pin_env".into(), "is empty".into());
            None
        }
        (Some(_), Some(_)) => {
            p.add(
                "pkcs11".into(),
                "give the PIN once: pin_file or pin_env, not both".into(),
            );
            None
        }
        (None, None) => {
            p.add(
                "pkcs11".into(),
                "needs the token's PIN: pin_file (a file holding it) or pin_env (an environment \
                 variable)"
                    .into(),
            );
            None
        }
    };
    let module = raw.module.map(|module| base.join(module));
    for (setting, uri) in &uses {
        if module.is_none() && uri.module_path.is_none() {
            p.add(
                setting.clone(),
                "no PKCS#11 module: set [pkcs11] module, or module-path in the URI".into(),
            );
        }
    }
    if let Some(module) = module.as_deref().filter(|m| !m.exists()) {
        p.add(
            "pkcs11.module".into(),
            format!("{}: no such file", module.display()),
        );
    }
    let sessions = raw.sessions.unwrap_or(DEFAULT_SESSIONS);
    if sessions == 0 || sessions > 256 {
        p.add("pkcs11.sessions".into(), "must be between 1 and 256".into());
    }
    Some(Pkcs11Settings {
        module,
        pin: pin?,
        sessions,
    })
}

impl super::Config {
    /// The key `mesh` signs with when it is in a token (`signing_key`), opened; None when the
    /// mesh's key is the file in its `ca_dir`.
    pub fn token_key(
        &self,
        mesh: &MeshConfig,
    ) -> Result<Option<crate::domain::signing_key::CaKey>, crate::adapters::pkcs11::Pkcs11Error>
    {
        let (Some(uri), Some(settings)) = (&mesh.signing_key, &self.pkcs11) else {
            return Ok(None);
        };
        settings.open(uri).map(Some)
    }

    /// The audit key that signs checkpoints: the PEM file `[audit] key`, or the Ed25519 key in
    /// a token `[audit] signing_key` names; None when neither is configured.
    pub fn audit_signer(&self) -> Result<Option<AuditSigner>, AuditKeyError> {
        let audit = &self.audit;
        if let Some(uri) = &audit.signing_key {
            let Some(settings) = &self.pkcs11 else {
                return Ok(None); // refused at load: a key URI needs [pkcs11]
            };
            let key = settings.open(uri).map_err(AuditKeyError::Token)?;
            let Some(key) = key.token() else {
                return Ok(None);
            };
            return AuditSigner::from_token(&audit.key_name, key.clone())
                .map(Some)
                .map_err(|e| AuditKeyError::Key {
                    key: uri.clone(),
                    reason: e.to_string(),
                });
        }
        let Some(path) = &audit.key else {
            return Ok(None);
        };
        let failed = |reason: String| AuditKeyError::Key {
            key: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| failed(e.to_string()))?;
        let der = PrivatePkcs8KeyDer::from_pem_slice(&pem)
            .map_err(|_| failed("not a PKCS#8 PEM private key".into()))?;
        AuditSigner::from_pkcs8(&audit.key_name, der.secret_pkcs8_der())
            .map(Some)
            .map_err(|e| failed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::adapters::config::tests::parse;
    use crate::adapters::pkcs11::PinSource;

    fn problems(text: &str) -> Vec<(String, String)> {
        parse(text).map(|_| Vec::new()).unwrap_or_else(|error| {
            error
                .problems
                .into_iter()
                .map(|p| (p.key, p.message))
                .collect()
        })
    }

    const TOKEN_MESH: &str = r#"
        [[mesh]]
        name = "default"
        ca_dir = "cacerts"
        signing_key = "pkcs11:token=meshroot;object=default"
    "#;

    #[test]
    fn a_token_key_with_its_module_and_pin_file_is_read() {
        let module = tempfile::NamedTempFile::new().unwrap();
        let config = parse(&format!(
            "{TOKEN_MESH}\n[pkcs11]\nmodule = {:?}\npin_file = \"pin\"\nsessions = 2\n",
            module.path().display().to_string()
        ))
        .unwrap();
        let settings = config.pkcs11.unwrap();
        assert_eq!(settings.module.as_deref(), Some(module.path()));
        assert_eq!(
            settings.pin,
            PinSource::File(PathBuf::from("/etc/meshroot/pin"))
        );
        assert_eq!(settings.sessions, 2);
        assert_eq!(
            config.meshes[0].signing_key.as_deref(),
            Some("pkcs11:token=meshroot;object=default")
        );
    }

    #[test]
    fn a_token_key_without_a_way_to_reach_it_is_refused_at_its_key() {
        let cases: [(&str, (&str, &str)); 6] = [
            ("", ("mesh[0].signing_key", "add a [pkcs11] section")),
            (
                "[pkcs11]\nmodule = \"/nonexistent.so\"\n",
                ("pkcs11", "needs the token's PIN"),
            ),
            (
                "[pkcs11]\nmodule = \"/nonexistent.so\"\npin_file = \"p\"\npin_env = \"P\"\n",
                ("pkcs11", "pin_file or pin_env, not both"),
            ),
            (
                "[pkcs11]\npin_env = \"P\"\n",
                ("mesh[0].signing_key", "no PKCS#11 module"),
            ),
            (
                "[pkcs11]\nmodule = \"/nonexistent.so\"\npin_env = \"P\"\n",
                ("pkcs11.module", "/nonexistent.so: no such file"),
            ),
            (
                "[pkcs11]\nmodule = \"/nonexistent.so\"\npin_env = \"P\"\nsessions = 0\n",
                ("pkcs11.sessions", "between 1 and 256"),
            ),
        ];
        for (section, (key, message)) in cases {
            let found = problems(&format!("{TOKEN_MESH}\n{section}"));
            assert!(
                found.iter().any(|(k, m)| k == key && m.contains(message)),
                "{section:?}: {found:?}"
            );
        }
    }

    #[test]
    fn the_audit_key_in_a_token_is_named_once_and_needs_the_pkcs11_section() {
        let audit = |keys: &str| {
            format!("[[mesh]]\nname = \"default\"\nca_dir = \"cacerts\"\n[audit]\n{keys}")
        };
        let uri = "signing_key = \"pkcs11:token=meshroot;object=meshroot-audit\"\n";
        let module = tempfile::NamedTempFile::new().unwrap();
        let section = format!(
            "[pkcs11]\nmodule = {:?}\npin_env = \"PIN\"\n",
            module.path().display().to_string()
        );
        let config = parse(&format!("{}{section}", audit(uri))).unwrap();
        assert_eq!(
            config.audit.signing_key.as_deref(),
            Some("pkcs11:token=meshroot;object=meshroot-audit")
        );
        assert_eq!(config.audit.key, None);
        let cases = [
            (audit(uri), "add a [pkcs11] section"),
            (
                format!("{}key = \"audit-key.pem\"\n{section}", audit(uri)),
                "key (a PEM file) or signing_key",
            ),
            (
                format!(
                    "{}{section}",
                    audit("signing_key = \"pkcs11:object=a?pin-value=1\"\n")
                ),
                "pin",
            ),
        ];
        for (text, message) in cases {
            let found = problems(&text);
            assert!(
                found
                    .iter()
                    .any(|(k, m)| k == "audit.signing_key" && m.contains(message)),
                "{text}: {found:?}"
            );
        }
    }

    #[test]
    fn a_pin_in_the_uri_or_a_key_file_beside_the_token_key_is_refused() {
        let found = problems(
            r#"
            [[mesh]]
            name = "default"
            ca_dir = "cacerts"
            signing_key = "pkcs11:token=meshroot;object=default?pin-value=123456"
            "#,
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "mesh[0].signing_key");
        assert!(found[0].1.contains("may not be written"), "{found:?}");
        assert!(!found[0].1.contains("123456"), "{found:?}");

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca-key.pem"), "").unwrap();
        let found = problems(&format!(
            "[[mesh]]\nname = \"default\"\nca_dir = {:?}\nsigning_key = \"pkcs11:token=t;object=k\"\n",
            dir.path().display().to_string()
        ));
        assert!(
            found
                .iter()
                .any(|(k, m)| k == "mesh[0].signing_key" && m.contains("also holds a key file")),
            "{found:?}"
        );
    }

    #[test]
    fn ca_key_uri_in_the_ca_directory_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("ca-key.uri"),
            "pkcs11:token=meshroot;object=default;id=%01\n",
        )
        .unwrap();
        let config = parse(&format!(
            "[[mesh]]\nname = \"default\"\nca_dir = {:?}\n[pkcs11]\npin_env = \"P\"\n",
            dir.path().display().to_string()
        ));
        // The URI is read; without a module the key cannot be reached, and that is said.
        let error = config.unwrap_err();
        assert!(
            error
                .problems
                .iter()
                .any(|p| p.key == "mesh[0].signing_key" && p.message.contains("no PKCS#11 module")),
            "{error}"
        );
    }
}
