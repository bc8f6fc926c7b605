//! `meshroot init` and `meshroot rotate intermediate`: creating CA material on disk, a shared
//! root with one intermediate per mesh in Istio's `cacerts` layout, plus a config serving them.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use percent_encoding::utf8_percent_encode;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyUsagePurpose,
    SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};

use crate::adapters::authn::jwt::DevTokenSigner;
use crate::adapters::config::{self, DEFAULT_LISTEN};
use crate::adapters::pkcs11::{NewKey, PinSource, Pkcs11Settings};
use crate::domain::audit::checkpoint::AuditSigner;
use crate::domain::identity::TrustDomain;
use crate::domain::keys::{self, certificate_pem, KeyType};
use crate::domain::record::{Record, CA_KEY_CREATED};
pub use crate::domain::signer::files::CaFilesError;
use crate::domain::signing_key::CaKey;
use crate::edge::cli::helm_values::helm_values_yaml;
use crate::issuance::ca_key::{ca_key_record, CaCertificate, ROLE_INTERMEDIATE, ROLE_ROOT};

pub(crate) const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86400);
pub(crate) const INTERMEDIATE_VALIDITY: Duration = Duration::from_secs(5 * 365 * 86400);
/// NotBefore of generated CAs is backdated by this much for clock skew.
const CA_BACKDATE: Duration = Duration::from_secs(3600);

/// The audit key's file (Ed25519, PKCS#8 PEM) in an `init` directory.
pub(crate) const AUDIT_KEY_FILE: &str = "audit-key.pem";
/// The label of the audit key `init` makes in a token.
pub(crate) const AUDIT_KEY_LABEL: &str = "meshroot-audit";
/// Its verifier key (`name+id+key`), to give auditors.
pub(crate) const AUDIT_VERIFIER_FILE: &str = "audit-key.pub";

/// What `meshroot init` creates.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub dir: PathBuf,
    pub meshes: Vec<(String, TrustDomain)>,
    pub key_type: KeyType,
    pub dev_issuer: bool,
    /// Confine each mesh's intermediate to URIs of its trust domain (a critical
    /// name-constraints extension); off only for verifiers that cannot process it.
    pub name_constraints: bool,
    /// Each mesh intermediate's pathLenConstraint: 0 (it signs leaves only), or 1 so that
    /// meshroot can issue clusters' istiod intermediates below it.
    pub intermediate_path_len: u8,
    pub force: bool,
    /// Proxies the meshes run: sizes the store's volume (the sizing rule, `domain::capacity`)
    /// in the config's comment and the Helm values.
    pub workloads: u64,
    /// Generate the root and intermediate keys in this PKCS#11 token (label) instead of PEM
    /// files; only certificates are written to disk.
    pub token: Option<TokenKeys>,
}

/// Where `init` and `rotate` make CA keys in a token.
#[derive(Debug, Clone)]
pub struct TokenKeys {
    pub settings: Pkcs11Settings,
    /// The token's label.
    pub token: String,
}

/// The file naming the root key in a token (a PKCS#11 URI, no secret), beside `root-cert.pem`.
pub(crate) const ROOT_KEY_URI_FILE: &str = "root-key.uri";

/// A new CA key: in memory (written as PEM) or generated in a token.
fn new_ca_key(
    key_type: KeyType,
    token: Option<&TokenKeys>,
    label: &str,
    replace: bool,
) -> Result<(CaKey, Option<String>), CaFilesError> {
    let failed = |reason: String| CaFilesError::Generate {
        what: format!("the key {label}"),
        reason,
    };
    match token {
        None => key_type
            .generate()
            .map(|key| (CaKey::memory(key), None))
            .map_err(|e| failed(e.to_string())),
        Some(_) if key_type != KeyType::EcdsaP256 => Err(failed(
            "a key in a token is ECDSA P-256: leave out --key-type or give ecdsa-p256".into(),
        )),
        Some(token) => {
            let (key, uri) = token.generate(label, replace, NewKey::EcdsaP256)?;
            Ok((key, Some(uri)))
        }
    }
}

impl TokenKeys {
    /// Generates a key of `kind` labelled `label` in the token; returns it and the URI that
    /// names exactly it (by label and id, so a label used again after a rotation still names
    /// this key).
    fn generate(
        &self,
        label: &str,
        replace: bool,
        kind: NewKey,
    ) -> Result<(CaKey, String), CaFilesError> {
        let uri = format!(
            "pkcs11:token={};object={}",
            utf8_percent_encode(&self.token, URI_VALUE),
            utf8_percent_encode(label, URI_VALUE)
        );
        let key =
            self.settings
                .generate(&uri, replace, kind)
                .map_err(|e| CaFilesError::Generate {
                    what: format!("the key {label}"),
                    reason: e.to_string(),
                })?;
        let id = key
            .token()
            .map(|key| key.describe().key_id)
            .unwrap_or_default();
        let id: String = id
            .as_bytes()
            .chunks(2)
            .map(|pair| format!("%{}", String::from_utf8_lossy(pair)))
            .collect();
        Ok((key, format!("{uri};id={id}")))
    }
}

/// What a PKCS#11 URI attribute value may hold unescaped (RFC 7512's `pk11-pchar`, less `/`).
const URI_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Writes a CA key where its directory keeps it: a memory key as `pem_name` (0600), a token
/// key as the URI that names it, in `<name>.uri` (no secret: the key stays in the token).
fn write_key(
    dir: &Path,
    pem_name: &str,
    key: &CaKey,
    uri: Option<&str>,
) -> Result<(), CaFilesError> {
    match (key, uri) {
        (CaKey::Memory(key), _) => {
            write_file(&dir.join(pem_name), key.serialize_pem().as_bytes(), true)
        }
        (CaKey::Token(_), Some(uri)) => {
            let name = format!("{}.uri", pem_name.trim_end_matches(".pem"));
            write_file(&dir.join(name), format!("{uri}\n").as_bytes(), false)
        }
        (CaKey::Token(_), None) => Err(CaFilesError::Generate {
            what: pem_name.to_owned(),
            reason: "a token key without its URI".into(),
        }),
    }
}

/// The `[pkcs11]` section of a configuration whose keys `init` made in a token.
fn pkcs11_section(settings: &Pkcs11Settings) -> String {
    let mut section = String::from(
        "\n# The CA keys are in a PKCS#11 token (each mesh's ca-key.uri names its key); the PIN is\n\
         # read from pin_file or pin_env, never written here.\n[pkcs11]\n",
    );
    if let Some(module) = &settings.module {
        section.push_str(&format!(
            "module = {}\n",
            toml_string(&module.display().to_string())
        ));
    }
    section.push_str(&format!("sessions = {}\n", settings.sessions));
    match &settings.pin {
        PinSource::File(path) => section.push_str(&format!(
            "pin_file = {}\n",
            toml_string(&path.display().to_string())
        )),
        PinSource::Env(name) => section.push_str(&format!("pin_env = {}\n", toml_string(name))),
    }
    section
}

/// The root key of an `init` directory: `root-key.pem`, or the token key `root-key.uri` names.
pub(crate) fn root_key(
    root_dir: &Path,
    pkcs11: Option<&Pkcs11Settings>,
) -> Result<CaKey, CaFilesError> {
    let invalid = |file: &str, reason: String| CaFilesError::Generate {
        what: format!("{} ({file})", root_dir.display()),
        reason,
    };
    let uri_path = root_dir.join(ROOT_KEY_URI_FILE);
    if !uri_path.exists() {
        let path = root_dir.join("root-key.pem");
        let pem = fs::read(&path).map_err(|source| CaFilesError::Read { path, source })?;
        return keys::load_private_key_pem(&pem)
            .map(CaKey::memory)
            .map_err(|e| invalid("root-key.pem", e.to_string()));
    }
    let uri = fs::read_to_string(&uri_path).map_err(|source| CaFilesError::Read {
        path: uri_path.clone(),
        source,
    })?;
    let settings = pkcs11.ok_or_else(|| {
        invalid(
            ROOT_KEY_URI_FILE,
            "the root key is in a PKCS#11 token: give --pkcs11-module and its PIN".into(),
        )
    })?;
    settings
        .open(uri.trim())
        .map_err(|e| invalid(ROOT_KEY_URI_FILE, e.to_string()))
}

/// Files written by `init`, for the user.
#[derive(Debug, Clone)]
pub struct InitReport {
    pub config: PathBuf,
    pub root_certificate: PathBuf,
    pub mesh_dirs: Vec<PathBuf>,
    /// The CA material as values for the Helm chart (deploy/helm/meshroot).
    pub helm_values: PathBuf,
    /// What the log is to say of the CA certificates made and where their keys are (the
    /// `init` command writes them into the new store).
    pub records: Vec<Record>,
}

/// The Helm values file `init` writes beside the CA material.
pub(crate) const HELM_VALUES_FILE: &str = "helm-values.yaml";

/// The issuer name of a mesh's local development token issuer.
pub fn dev_issuer_name(mesh: &str) -> String {
    format!("https://meshroot.dev.invalid/{mesh}")
}

/// Creates a shared root, one intermediate (pathlen 0) per mesh, and a config serving them.
/// Private keys are written 0600. Existing keys are kept unless `force`.
pub fn init(options: &InitOptions, now: SystemTime) -> Result<InitReport, CaFilesError> {
    let dir = &options.dir;
    let root_key_file = match options.token {
        Some(_) => ROOT_KEY_URI_FILE,
        None => "root-key.pem",
    };
    let mut key_paths = vec![dir.join(root_key_file)];
    if options.token.is_none() {
        key_paths.push(dir.join(AUDIT_KEY_FILE));
    }
    for (mesh, _) in &options.meshes {
        key_paths.push(dir.join(mesh).join(match options.token {
            Some(_) => "ca-key.uri",
            None => "ca-key.pem",
        }));
        if options.dev_issuer {
            key_paths.push(dir.join(mesh).join("dev-issuer-key.pem"));
        }
    }
    if !options.force {
        if let Some(existing) = key_paths.iter().find(|p| p.exists()) {
            return Err(CaFilesError::WouldOverwrite {
                path: existing.clone(),
            });
        }
    }
    let generate_failed = |what: &str, reason: String| CaFilesError::Generate {
        what: what.to_owned(),
        reason,
    };
    let rng = SystemRandom::new();
    let not_before = now.checked_sub(CA_BACKDATE).unwrap_or(now);

    let (root_key, root_uri) = new_ca_key(
        options.key_type,
        options.token.as_ref(),
        "meshroot-root",
        options.force,
    )?;
    let mut root_params = ca_params("meshroot root CA", not_before, now + ROOT_VALIDITY, &rng)
        .map_err(|e| generate_failed("the root certificate", e))?;
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let root = root_params
        .self_signed(&root_key)
        .map_err(|e| generate_failed("the root certificate", e.to_string()))?;
    let root_pem = certificate_pem(root.der());
    let root_location = root_key.location();
    let mut records: Vec<Record> = ca_key_record(
        CaCertificate {
            event: CA_KEY_CREATED,
            role: ROLE_ROOT,
            mesh: "",
            certificate: root.der(),
            issuer: root.der(),
            key: root_location.clone(),
            signed_by: None,
        },
        now,
    )
    .into_iter()
    .collect();
    let root_issuer = Issuer::new(root_params, &root_key);

    fs::create_dir_all(dir).map_err(|source| CaFilesError::Write {
        path: dir.clone(),
        source,
    })?;
    write_file(&dir.join("root-cert.pem"), root_pem.as_bytes(), false)?;
    write_key(dir, "root-key.pem", &root_key, root_uri.as_deref())?;

    let mut config = String::from(
        "# meshroot configuration, written by `meshroot init`. Paths are relative to this file.\n",
    );
    config.push_str(&format!(
        "listen = {}\ndns_names = [{}]\nstore = \"store\"\n",
        toml_string(DEFAULT_LISTEN),
        config::DEFAULT_DNS_NAMES
            .iter()
            .map(|n| toml_string(n))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut mesh_dirs = Vec::new();
    for (mesh, trust_domain) in &options.meshes {
        let mesh_dir = dir.join(mesh);
        fs::create_dir_all(&mesh_dir).map_err(|source| CaFilesError::Write {
            path: mesh_dir.clone(),
            source,
        })?;
        let permitted = std::slice::from_ref(trust_domain);
        let key = new_ca_key(
            options.key_type,
            options.token.as_ref(),
            &format!("meshroot-{mesh}-intermediate"),
            options.force,
        )?;
        let key_location = key.0.location();
        let intermediate = write_intermediate(
            &mesh_dir,
            mesh,
            key,
            options.name_constraints.then_some(permitted),
            options.intermediate_path_len,
            &root_issuer,
            &root_pem,
            now,
            &rng,
        )?;
        records.extend(ca_key_record(
            CaCertificate {
                event: CA_KEY_CREATED,
                role: ROLE_INTERMEDIATE,
                mesh,
                certificate: &intermediate,
                issuer: root.der(),
                key: key_location,
                signed_by: Some(root_location.clone()),
            },
            now,
        ));

        config.push_str(&format!(
            "\n[[mesh]]\nname = {name}\ntrust_domain = {}\nca_dir = {name}\n\
             default_ttl = {}\nmax_ttl = {}\n",
            toml_string(trust_domain.as_str()),
            toml_string(&crate::domain::clock::format_duration(config::DEFAULT_TTL)),
            toml_string(&crate::domain::clock::format_duration(
                config::DEFAULT_MAX_TTL
            )),
            name = toml_string(mesh),
        ));
        if options.dev_issuer {
            let (signer, pkcs8) = DevTokenSigner::generate()
                .map_err(|e| generate_failed("a development issuer key", e.to_string()))?;
            write_file(
                &mesh_dir.join("dev-issuer-key.pem"),
                keys::pem_encode("PRIVATE KEY", &pkcs8).as_bytes(),
                true,
            )?;
            write_file(
                &mesh_dir.join("dev-issuer-jwks.json"),
                signer.jwks_json().as_bytes(),
                false,
            )?;
            config.push_str(&format!(
                "\n# Local development token issuer: `meshroot token` mints its tokens. Never use in production.\n\
                 [[mesh.token_issuer]]\nissuer = {}\njwks = {}\n\
                 audiences = [{}]\ndev_signing_key = {}\n",
                toml_string(&dev_issuer_name(mesh)),
                toml_string(&format!("{mesh}/dev-issuer-jwks.json")),
                toml_string(config::DEFAULT_AUDIENCE),
                toml_string(&format!("{mesh}/dev-issuer-key.pem")),
            ));
        } else {
            config.push_str(
                "\n# Add the cluster's service-account token issuer, e.g.:\n\
                 # [[mesh.token_issuer]]\n# issuer = \"https://kubernetes.default.svc.cluster.local\"\n\
                 # jwks = \"/path/to/cluster-jwks.json\"   # kubectl get --raw /openid/v1/jwks\n",
            );
        }
        mesh_dirs.push(mesh_dir);
    }
    // The audit key signs checkpoints of the issuance log; its name (also the checkpoint
    // origin) is unique per `init`, so checkpoints of different logs cannot be confused.
    let mut id = [0u8; 4];
    rng.fill(&mut id)
        .map_err(|_| generate_failed("the audit key", "no randomness".into()))?;
    let key_name = format!(
        "{}/{}",
        config::DEFAULT_AUDIT_KEY_NAME,
        crate::domain::digest::hex(&id)
    );
    // In a token, the audit key is an Ed25519 key there too (checkpoints are signed notes);
    // the configuration names it by URI.
    let (audit_signer, audit_key_uri) = match &options.token {
        None => {
            let (signer, pkcs8) = AuditSigner::generate(&key_name)
                .map_err(|e| generate_failed("the audit key", e.to_string()))?;
            write_file(
                &dir.join(AUDIT_KEY_FILE),
                keys::pem_encode("PRIVATE KEY", &pkcs8).as_bytes(),
                true,
            )?;
            (signer, None)
        }
        Some(token) => {
            let (key, uri) = token.generate(AUDIT_KEY_LABEL, options.force, NewKey::Ed25519)?;
            let signer = key
                .token()
                .ok_or_else(|| generate_failed("the audit key", "not in the token".into()))
                .and_then(|key| {
                    AuditSigner::from_token(&key_name, key.clone())
                        .map_err(|e| generate_failed("the audit key", e.to_string()))
                })?;
            (signer, Some(uri))
        }
    };
    write_file(
        &dir.join(AUDIT_VERIFIER_FILE),
        format!("{}\n", audit_signer.verifier_key()).as_bytes(),
        false,
    )?;
    config.push_str(&format!(
        "\n# The issuance log: checkpoints signed with the audit key (verifier key in {AUDIT_VERIFIER_FILE}),\n\
         # published to checkpoint_file; records kept issued_retention after their certificate\n\
         # expired, denials for denial_retention. {sizing}\n\
         # (docs/audit.md, the sizing rule; `meshroot init --workloads N`)\n\
         [audit]\n{}\nkey_name = {}\ncheckpoint_file = \"checkpoint.txt\"\n\
         checkpoint_interval = {}\nissued_retention = \"400d\"\ndenial_retention = \"30d\"\nprune_interval = \"1h\"\n\
         \n# The audit API (gRPC meshroot.audit.v1.AuditService). On a non-loopback address it\n\
         # requires mutual TLS from one of allowed_identities (certificates meshroot issued).\n\
         [admin]\nlisten = {}\n# allowed_identities = [\"spiffe://cluster.local/ns/istio-system/sa/auditor\"]\n",
        match &audit_key_uri {
            None => format!("key = {}", toml_string(AUDIT_KEY_FILE)),
            Some(uri) => format!("signing_key = {}", toml_string(uri)),
        },
        toml_string(&key_name),
        toml_string(&crate::domain::clock::format_duration(config::DEFAULT_CHECKPOINT_INTERVAL)),
        toml_string(config::DEFAULT_ADMIN_LISTEN),
        sizing = crate::domain::capacity::sizing_summary(options.workloads),
    ));
    sign_root_crl(
        dir,
        options.token.as_ref().map(|token| &token.settings),
        ROOT_CRL_VALIDITY,
        now,
        &dir.join(ROOT_CRL_FILE),
    )?;
    config.push_str(
        "\n# Revocation (`meshroot revoke`): a CRL per intermediate, signed by meshroot, plus the\n\
         # root's (root-crl.pem: renew it with `meshroot crl sign-root` before it lapses). Envoy\n\
         # needs a CRL from every CA in a chain once it is given any.\n\
         [revocation]\ncrl_file = \"ca-crl.pem\"\nextra_crls = [\"root-crl.pem\"]\n",
    );
    if let Some(token) = &options.token {
        config.push_str(&pkcs11_section(&token.settings));
    }
    let config_path = dir.join("meshroot.toml");
    write_file(&config_path, config.as_bytes(), false)?;
    let helm_values = dir.join(HELM_VALUES_FILE);
    let meshes: Vec<&str> = options.meshes.iter().map(|(m, _)| m.as_str()).collect();
    write_file(
        &helm_values,
        helm_values_yaml(
            dir,
            &meshes,
            &[ROOT_CRL_FILE, AUDIT_KEY_FILE],
            audit_key_uri.as_deref(),
            options.workloads,
        )?
        .as_bytes(),
        true,
    )?;
    Ok(InitReport {
        config: config_path,
        root_certificate: dir.join("root-cert.pem"),
        mesh_dirs,
        helm_values,
        records,
    })
}

/// The root's CRL in the directory `init` writes.
pub(crate) const ROOT_CRL_FILE: &str = "root-crl.pem";
/// How long the root CRL `init` signs is valid.
pub(crate) const ROOT_CRL_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

/// Signs the root's (empty) CRL with the root key in `root_dir` (root-cert.pem, root-key.pem),
/// valid for `valid_for`, and writes it to `out`. Envoy checks a CRL from every CA in a chain
/// once any CRL is configured, so the root's must be published with the intermediates'.
pub(crate) fn sign_root_crl(
    root_dir: &Path,
    pkcs11: Option<&Pkcs11Settings>,
    valid_for: Duration,
    now: SystemTime,
    out: &Path,
) -> Result<(), CaFilesError> {
    let read = |name: &str| {
        let path = root_dir.join(name);
        fs::read(&path).map_err(|source| CaFilesError::Read { path, source })
    };
    let invalid = |file: &str, reason: String| CaFilesError::Generate {
        what: format!("{} ({file})", root_dir.display()),
        reason,
    };
    let root_key = root_key(root_dir, pkcs11)?;
    let roots = keys::parse_certificates_pem(&read("root-cert.pem")?)
        .map_err(|e| invalid("root-cert.pem", e.to_string()))?;
    let [root] = roots.as_slice() else {
        return Err(invalid(
            "root-cert.pem",
            "holds more than one certificate".into(),
        ));
    };
    let ski = {
        use x509_parser::prelude::FromDer;
        x509_parser::certificate::X509Certificate::from_der(root)
            .ok()
            .and_then(|(_, cert)| {
                cert.extensions()
                    .iter()
                    .find_map(|e| match e.parsed_extension() {
                        x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(ski) => {
                            Some(ski.0.to_vec())
                        }
                        _ => None,
                    })
            })
    };
    let issuer = Issuer::from_ca_cert_der(root, root_key)
        .map_err(|e| invalid("root-cert.pem", e.to_string()))?;
    let number = crate::domain::clock::unix_millis(now).max(1) as u64;
    let next_update = crate::domain::clock::later(now, valid_for)
        .map_err(|e| invalid("--valid-for", e.to_string()))?;
    let params = rcgen::CertificateRevocationListParams {
        this_update: time::OffsetDateTime::from(now),
        next_update: time::OffsetDateTime::from(next_update),
        crl_number: rcgen::SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: match ski {
            Some(ski) => rcgen::KeyIdMethod::PreSpecified(ski),
            None => rcgen::KeyIdMethod::Sha256,
        },
    };
    let crl = params
        .signed_by(&issuer)
        .map_err(|e| invalid("root-key.pem", e.to_string()))?;
    write_file(out, keys::crl_pem(crl.der()).as_bytes(), false)
}

/// Makes a new intermediate (pathlen `path_len`) for `mesh` under `root_issuer` and writes the
/// mesh's `cacerts` files into `mesh_dir`: ca-cert.pem, ca-key.pem (0600), cert-chain.pem,
/// root-cert.pem. With `permitted` trust domains, the intermediate may certify only URIs whose
/// host is one of them (a critical name-constraints extension).
#[allow(clippy::too_many_arguments)]
fn write_intermediate(
    mesh_dir: &Path,
    mesh: &str,
    (key, uri): (CaKey, Option<String>),
    permitted: Option<&[TrustDomain]>,
    path_len: u8,
    root_issuer: &Issuer<'_, impl rcgen::SigningKey>,
    root_pem: &str,
    now: SystemTime,
    rng: &SystemRandom,
) -> Result<Vec<u8>, CaFilesError> {
    let generate_failed = |what: &str, reason: String| CaFilesError::Generate {
        what: what.to_owned(),
        reason,
    };
    let not_before = now.checked_sub(CA_BACKDATE).unwrap_or(now);
    let intermediate_not_after = (now + INTERMEDIATE_VALIDITY).min(now + ROOT_VALIDITY);
    let mut params = ca_params(
        &format!("meshroot intermediate CA {mesh}"),
        not_before,
        intermediate_not_after,
        rng,
    )
    .map_err(|e| generate_failed("an intermediate certificate", e))?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.use_authority_key_identifier_extension = true;
    if let Some(permitted) = permitted {
        let constraints = crate::domain::signer::constraints::uri_name_constraints(permitted)
            .map_err(|e| generate_failed("the intermediate's name constraints", e.to_string()))?;
        params.custom_extensions.push(constraints);
    }
    let intermediate = params
        .signed_by(&key, root_issuer)
        .map_err(|e| generate_failed("an intermediate certificate", e.to_string()))?;
    let intermediate_pem = certificate_pem(intermediate.der());
    fs::create_dir_all(mesh_dir).map_err(|source| CaFilesError::Write {
        path: mesh_dir.to_owned(),
        source,
    })?;
    write_file(
        &mesh_dir.join("ca-cert.pem"),
        intermediate_pem.as_bytes(),
        false,
    )?;
    write_key(mesh_dir, "ca-key.pem", &key, uri.as_deref())?;
    write_file(
        &mesh_dir.join("cert-chain.pem"),
        format!("{intermediate_pem}{root_pem}").as_bytes(),
        false,
    )?;
    write_file(&mesh_dir.join("root-cert.pem"), root_pem.as_bytes(), false)?;
    Ok(intermediate.der().to_vec())
}

/// How `meshroot rotate intermediate` makes an intermediate.
#[derive(Debug, Clone)]
pub struct IntermediateOptions {
    pub key_type: KeyType,
    /// The trust domains its URIs are confined to; `None`: no name constraints.
    pub permitted: Option<Vec<TrustDomain>>,
    /// Its pathLenConstraint (1: meshroot may issue clusters' intermediates below it).
    pub path_len: u8,
    /// Replace an existing key.
    pub force: bool,
    /// The PKCS#11 module and PIN: for a root key in a token (`root-key.uri`), and for a new
    /// key made in the token `token_label`.
    pub pkcs11: Option<Pkcs11Settings>,
    /// Generate the new intermediate's key in this token (its label).
    pub token_label: Option<String>,
}

/// A new intermediate for `mesh` under the root in `root_dir` (its `root-cert.pem` and
/// `root-key.pem`, as `init` wrote them), written in the `cacerts` layout into `out`: the
/// intermediate rotation, with no change of trust bundle. Refuses to replace an existing key
/// unless `force`.
pub fn issue_intermediate(
    root_dir: &Path,
    mesh: &str,
    out: &Path,
    options: &IntermediateOptions,
    now: SystemTime,
) -> Result<(), CaFilesError> {
    let IntermediateOptions {
        key_type,
        permitted,
        path_len,
        force,
        pkcs11,
        token_label,
    } = options;
    let (key_type, path_len, force) = (*key_type, *path_len, *force);
    let permitted = permitted.as_deref();
    for existing in ["ca-key.pem", "ca-key.uri"].map(|name| out.join(name)) {
        if !force && existing.exists() {
            return Err(CaFilesError::WouldOverwrite { path: existing });
        }
    }
    let token = match (token_label, pkcs11) {
        (Some(token), Some(settings)) => Some(TokenKeys {
            settings: settings.clone(),
            token: token.clone(),
        }),
        (Some(_), None) => {
            return Err(CaFilesError::Generate {
                what: format!("the {mesh} intermediate key"),
                reason: "--pkcs11-token needs --pkcs11-module and the PIN".into(),
            })
        }
        (None, _) => None,
    };
    let read = |name: &str| {
        let path = root_dir.join(name);
        fs::read(&path).map_err(|source| CaFilesError::Read { path, source })
    };
    let root_pem_bytes = read("root-cert.pem")?;
    let invalid = |file: &str, reason: String| CaFilesError::Generate {
        what: format!("{} ({file})", root_dir.display()),
        reason,
    };
    let root_key = root_key(root_dir, pkcs11.as_ref())?;
    let root_pem = String::from_utf8(root_pem_bytes)
        .map_err(|_| invalid("root-cert.pem", "not UTF-8 PEM".into()))?;
    let roots = keys::parse_certificates_pem(root_pem.as_bytes())
        .map_err(|e| invalid("root-cert.pem", e.to_string()))?;
    let [root] = roots.as_slice() else {
        return Err(invalid(
            "root-cert.pem",
            format!(
                "holds {} certificates; the root directory holds one root",
                roots.len()
            ),
        ));
    };
    let root_issuer = Issuer::from_ca_cert_der(root, root_key)
        .map_err(|e| invalid("root-cert.pem", e.to_string()))?;
    // In a token the label stays and the id is new: the URI written names this key exactly.
    let key = new_ca_key(
        key_type,
        token.as_ref(),
        &format!("meshroot-{mesh}-intermediate"),
        true,
    )?;
    write_intermediate(
        out,
        mesh,
        key,
        permitted,
        path_len,
        &root_issuer,
        &certificate_pem(root),
        now,
        &SystemRandom::new(),
    )
    .map(|_| ())
}

fn ca_params(
    common_name: &str,
    not_before: SystemTime,
    not_after: SystemTime,
    rng: &SystemRandom,
) -> Result<CertificateParams, String> {
    let mut serial = [0u8; 16];
    rng.fill(&mut serial)
        .map_err(|_| "no randomness".to_owned())?;
    serial[0] = (serial[0] & 0x7f) | 0x40;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "meshroot");
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = time::OffsetDateTime::from(not_before);
    params.not_after = time::OffsetDateTime::from(not_after);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// Writes a file atomically (temporary file, then rename); secrets get mode 0600 from creation.
fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), CaFilesError> {
    let error = |source| CaFilesError::Write {
        path: path.to_owned(),
        source,
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{file_name}.tmp"));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(&temporary).map_err(error)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = if secret { 0o600 } else { 0o644 };
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(error)?;
    }
    file.write_all(contents).map_err(error)?;
    file.sync_all().map_err(error)?;
    drop(file);
    fs::rename(&temporary, path).map_err(error)
}

/// A TOML string (quoted and escaped by the toml crate), for the config `init` writes around its
/// comments.
fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_owned()).to_string()
}
