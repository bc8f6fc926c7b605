//! The plug-in path: a cluster's `cacerts` Secret (Istio's layout: `ca-cert.pem`, `ca-key.pem`,
//! `cert-chain.pem`, `root-cert.pem`), which istiod signs workloads with, kept by meshroot.
//!
//! The Secret is current when its four files are present, `root-cert.pem` is the mesh's trust
//! bundle now, `cert-chain.pem` continues with the mesh's chain now, `ca-key.pem` is the key of
//! `ca-cert.pem`, and less than the configured fraction of the intermediate's lifetime has
//! passed. Otherwise a new intermediate is issued (and recorded) and written: on the first run,
//! when someone edits or deletes the Secret, at the renewal fraction, and when the bundle or the
//! mesh's intermediate changes. Writes carry the resourceVersion read (409: read again).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::{pin, Pin};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use tokio::sync::watch;
use tokio_stream::StreamExt as _;

use super::{describe, is_conflict};

/// The Secret istiod reads plugged-in CA material from.
pub(crate) const CACERTS_SECRET: &str = "cacerts";
const FILES: [&str; 4] = [
    "ca-cert.pem",
    "ca-key.pem",
    "cert-chain.pem",
    "root-cert.pem",
];
/// How often the renewal time and the mesh's material are compared with what was written.
const CHANGE_POLL: Duration = Duration::from_secs(1);
const RETRY: Duration = Duration::from_secs(5);
const CONFLICT_RETRIES: usize = 3;

/// A new intermediate in Istio's layout. The key never appears in `Debug` output.
pub(crate) struct CacertsFiles {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub cert_chain_pem: String,
    pub root_cert_pem: String,
}

impl std::fmt::Debug for CacertsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacertsFiles").finish_non_exhaustive()
    }
}

pub(crate) type CacertsFuture<'a> =
    Pin<Box<dyn Future<Output = Result<CacertsFiles, String>> + Send + 'a>>;

/// The mesh a cluster's intermediate is issued from, read fresh each time.
pub(crate) trait CacertsSource: Send + Sync {
    /// The mesh's trust bundle (`root-cert.pem`), PEM; None while the mesh is not loaded or
    /// the bundle awaits the cluster's confirmation.
    fn bundle_pem(&self) -> Option<String>;
    /// What `cert-chain.pem` continues with after the cluster's intermediate: the mesh's
    /// intermediates and the root, PEM.
    fn chain_tail_pem(&self) -> Option<String>;
    /// Now, by the authority's clock.
    fn now(&self) -> SystemTime;
    /// Issues (and records) a new intermediate for the cluster.
    fn issue(&self) -> CacertsFuture<'_>;
    /// What the last probe of the cluster's istiod found (see [`probe_istiod`]).
    fn report_istiod(&self, current: Option<bool>);
    /// The mesh's CRLs (`ca-crl.pem`: its intermediates', the root's) when they cover every CA
    /// of its chains; None: no `ca-crl.pem` goes into `cacerts`.
    fn crl_pem(&self) -> Option<String>;
    /// `ca-crl.pem` was written into the cluster's `cacerts`.
    fn report_crl_published(&self);
    /// Whether the certificate with this serial was revoked (`meshroot revoke --intermediate`):
    /// a revoked intermediate is replaced at once.
    fn revoked(&self, serial: &[u8]) -> bool;
    /// The intermediate (DER) now in the cluster's `cacerts`, as written or found; `None` once
    /// this replica stops keeping it (leadership lost), so it reports no other's.
    fn report_intermediate(&self, _der: Option<&[u8]>) {}
}

/// Where and how one cluster's `cacerts` is kept.
#[derive(Debug, Clone)]
pub(crate) struct CacertsSettings {
    pub cluster: String,
    pub namespace: String,
    /// Renew once this fraction of the lifetime has passed.
    pub renew_at: f64,
    pub resync: Duration,
    /// Where to ask the cluster's istiod which intermediate it serves, and how often.
    pub istiod: Option<IstiodProbe>,
    /// How long the CRL of the cluster's intermediate is valid (signed again at half).
    pub crl_validity: Duration,
}

/// The file of `cacerts` istiod reads CRLs from (with `PILOT_ENABLE_CA_CRL`) and distributes as
/// the `istio-ca-crl` ConfigMap: the CRL of the cluster's intermediate (signed with its key,
/// which meshroot generated), then the mesh's CRLs.
pub(crate) const CACERTS_CRL: &str = "ca-crl.pem";

/// The cluster's istiod, asked which intermediate it signs with.
#[derive(Debug, Clone)]
pub(crate) struct IstiodProbe {
    /// `host:port` of istiod's TLS port (15012).
    pub address: String,
    pub interval: Duration,
}

/// How long a probe of istiod may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether istiod at `address` serves a certificate signed by `intermediate` (DER). With plugged
/// `cacerts`, istiod signs its own serving certificate with the plugged intermediate and re-issues
/// it when it reloads one, so the issuer of what it serves is the intermediate it uses.
///
/// Nothing is trusted from the handshake except this: the chain is read without judging it, and
/// "current" needs the leaf's signature to verify with `intermediate`'s key, which no one else
/// can make. (The handshake itself still proves istiod holds the leaf's key.)
pub(crate) async fn probe_istiod(address: &str, intermediate: &[u8]) -> Result<bool, String> {
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    let host = address
        .rsplit_once(':')
        .map_or(address, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let server_name = rustls_pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host}: {e}"))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(ChainReader(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tls = tokio::time::timeout(PROBE_TIMEOUT, async {
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|_| "timed out".to_owned())??;
    let (_, connection) = tls.get_ref();
    let leaf = connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or("istiod presented no certificate")?;
    let (_, leaf) = X509Certificate::from_der(leaf).map_err(|e| e.to_string())?;
    let (_, intermediate) = X509Certificate::from_der(intermediate).map_err(|e| e.to_string())?;
    Ok(leaf.issuer() == intermediate.subject()
        && leaf
            .verify_signature(Some(intermediate.public_key()))
            .is_ok())
}

/// Reads the server's chain without judging it (see [`probe_istiod`]); the handshake
/// signatures are still checked.
#[derive(Debug)]
struct ChainReader(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for ChainReader {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Keeps the cluster's `cacerts` while `leader` says this replica leads, until `shutdown`.
pub(crate) async fn run_cacerts(
    client: kube::Client,
    settings: CacertsSettings,
    source: std::sync::Arc<dyn CacertsSource>,
    mut leader: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stopped| *stopped) => return,
            led = leader.wait_for(|leads| *leads) => if led.is_err() { return },
        }
        tracing::info!(cluster = %settings.cluster, namespace = %settings.namespace, "keeping the cluster's {CACERTS_SECRET} Secret");
        // Without an election (no `[kubernetes]`) the sender is gone and this replica leads
        // for good.
        let loses = async {
            if leader.wait_for(|leads| !*leads).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = shutdown.wait_for(|stopped| *stopped) => return,
            _ = loses => {}
            _ = keep(&client, &settings, source.as_ref()) => {}
        }
        source.report_intermediate(None);
    }
}

async fn keep(client: &kube::Client, settings: &CacertsSettings, source: &dyn CacertsSource) {
    let api: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={CACERTS_SECRET}"));
    let mut events = pin!(watcher::watcher(api.clone(), config).default_backoff());
    let mut poll = tokio::time::interval(CHANGE_POLL);
    let mut resync = tokio::time::interval(settings.resync);
    // When the Secret as last written or checked must be renewed (by the authority's clock),
    // and the mesh material it was checked against.
    let mut renew_at: Option<SystemTime> = None;
    let mut written: Option<Vec<u8>> = None;
    let mut probe = tokio::time::interval(
        settings
            .istiod
            .as_ref()
            .map_or(Duration::from_secs(3600), |istiod| istiod.interval),
    );
    let mut seen: Option<(Option<String>, Option<String>, Option<String>)> = None;
    let mut due = true;
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            event = events.next() => match event {
                None => return,
                Some(Ok(Event::Apply(_) | Event::Delete(_) | Event::InitDone)) => due = true,
                Some(Ok(Event::Init | Event::InitApply(_))) => {}
                Some(Err(error)) => tracing::warn!(%error, cluster = %settings.cluster, "watching {CACERTS_SECRET} failed; retrying"),
            },
            _ = poll.tick() => {
                let now_seen = (source.bundle_pem(), source.chain_tail_pem(), source.crl_pem());
                if seen.as_ref().is_some_and(|seen| (&seen.0, &seen.1) != (&now_seen.0, &now_seen.1)) {
                    tracing::info!(cluster = %settings.cluster, "the trust bundle or the mesh's intermediate changed: renewing {CACERTS_SECRET}");
                    due = true;
                }
                if seen.as_ref().is_some_and(|seen| seen.2 != now_seen.2) {
                    tracing::info!(cluster = %settings.cluster, "the CRLs changed: updating {CACERTS_CRL} in {CACERTS_SECRET}");
                    due = true;
                }
                seen = Some(now_seen);
                if renew_at.is_some_and(|at| source.now() >= at) {
                    due = true;
                }
                if written
                    .as_deref()
                    .and_then(crate::domain::signer::check::serial_of)
                    .is_some_and(|serial| source.revoked(&serial))
                {
                    due = true;
                }
            }
            _ = resync.tick() => due = true,
            _ = probe.tick() => {
                if let (Some(istiod), Some(intermediate)) = (&settings.istiod, &written) {
                    let found = match probe_istiod(&istiod.address, intermediate).await {
                        Ok(current) => {
                            if !current {
                                tracing::warn!(cluster = %settings.cluster, address = %istiod.address, "istiod still serves a certificate from an older intermediate than the one in {CACERTS_SECRET}: restart istiod if it does not reload");
                            }
                            Some(current)
                        }
                        Err(error) => {
                            tracing::debug!(cluster = %settings.cluster, address = %istiod.address, %error, "could not ask istiod which intermediate it serves");
                            None
                        }
                    };
                    source.report_istiod(found);
                }
            }
        }
        if !due || retry_at.is_some_and(|at| at > tokio::time::Instant::now()) {
            continue;
        }
        retry_at = None;
        match ensure(&api, settings, source).await {
            Ok((at, der)) => {
                source.report_intermediate(Some(&der));
                renew_at = Some(at);
                written = Some(der);
                due = false;
            }
            Err(error) => {
                tracing::warn!(%error, cluster = %settings.cluster, "could not keep {CACERTS_SECRET}; retrying");
                retry_at = Some(tokio::time::Instant::now() + RETRY);
            }
        }
    }
}

/// Writes a new intermediate unless the Secret is current; returns when it must be renewed, and
/// the intermediate (DER) the Secret holds.
async fn ensure(
    api: &Api<Secret>,
    settings: &CacertsSettings,
    source: &dyn CacertsSource,
) -> Result<(SystemTime, Vec<u8>), String> {
    let bundle = source.bundle_pem().ok_or("the mesh is not loaded")?;
    let tail = source.chain_tail_pem().ok_or("the mesh is not loaded")?;
    for _ in 0..CONFLICT_RETRIES {
        let existing = api
            .get_opt(CACERTS_SECRET)
            .await
            .map_err(|e| describe(&e))?;
        let mesh_crls = source.crl_pem();
        let now = source.now();
        if let Some(secret) = &existing {
            if let Some((at, der)) = renewal_time(secret, &bundle, &tail, settings.renew_at) {
                let revoked = crate::domain::signer::check::serial_of(&der)
                    .is_some_and(|serial| source.revoked(&serial));
                if revoked {
                    tracing::warn!(cluster = %settings.cluster, "the intermediate in {CACERTS_SECRET} was revoked: replacing it");
                }
                if now < at && !revoked {
                    // The intermediate stands; its CRL and the mesh's may be due.
                    match crl_refresh_time(secret, mesh_crls.as_deref(), &der, settings, now) {
                        Some(None) => return Ok((at, der)),
                        Some(Some(crl_at)) if now < crl_at => return Ok((crl_at.min(at), der)),
                        _ => {}
                    }
                    let mut data = secret.data.clone().unwrap_or_default();
                    let crl = cacerts_crl(&data, Some(&data), mesh_crls.as_deref(), now, settings)?;
                    let crl_at = match crl {
                        Some(text) => {
                            data.insert(CACERTS_CRL.to_owned(), ByteString(text.into_bytes()));
                            Some(now + settings.crl_validity / 2)
                        }
                        None => {
                            data.remove(CACERTS_CRL);
                            None
                        }
                    };
                    match super::publish::write_secret(
                        api,
                        CACERTS_SECRET,
                        &settings.namespace,
                        "Opaque",
                        data,
                        existing.clone(),
                    )
                    .await
                    {
                        Ok(_) => {
                            tracing::info!(cluster = %settings.cluster, "{CACERTS_CRL} in {CACERTS_SECRET} updated");
                            source.report_crl_published();
                            return Ok((crl_at.map_or(at, |c| c.min(at)), der));
                        }
                        Err(error) if is_conflict(&error) => continue,
                        Err(error) => return Err(describe(&error)),
                    }
                }
            }
        }
        let files = source.issue().await?;
        let mut data: BTreeMap<String, ByteString> = [
            ("ca-cert.pem", files.ca_cert_pem),
            ("ca-key.pem", files.ca_key_pem),
            ("cert-chain.pem", files.cert_chain_pem),
            ("root-cert.pem", files.root_cert_pem),
        ]
        .into_iter()
        .map(|(name, text)| (name.to_owned(), ByteString(text.into_bytes())))
        .collect();
        let previous = existing.as_ref().and_then(|secret| secret.data.as_ref());
        let crl = cacerts_crl(&data, previous, mesh_crls.as_deref(), now, settings)?;
        if let Some(text) = &crl {
            data.insert(
                CACERTS_CRL.to_owned(),
                ByteString(text.clone().into_bytes()),
            );
        }
        let renew = {
            let secret = Secret {
                data: Some(data.clone()),
                ..Secret::default()
            };
            renewal_time(&secret, &bundle, &tail, settings.renew_at)
                .ok_or("the intermediate just issued does not check out")?
        };
        let result = super::publish::write_secret(
            api,
            CACERTS_SECRET,
            &settings.namespace,
            "Opaque",
            data,
            existing,
        )
        .await;
        match result {
            Ok(_) => {
                tracing::info!(cluster = %settings.cluster, namespace = %settings.namespace, "{CACERTS_SECRET} written with a new intermediate");
                if crl.is_some() {
                    source.report_crl_published();
                    let crl_at = now + settings.crl_validity / 2;
                    return Ok((renew.0.min(crl_at), renew.1));
                }
                return Ok(renew);
            }
            // The intermediate just issued stays in the record log, unused.
            Err(error) if is_conflict(&error) => {
                tracing::debug!("409 writing {CACERTS_SECRET}: reading it again")
            }
            Err(error) => return Err(describe(&error)),
        }
    }
    Err(format!(
        "{CACERTS_SECRET} kept changing under us (409 {CONFLICT_RETRIES} times)"
    ))
}

/// `ca-crl.pem` for `data` (a Secret's files, with the cluster's intermediate and its key): a
/// fresh CRL of the intermediate; the CRLs of the intermediates it replaced that have not lapsed
/// (istiod's leaves from them stay valid a while, and Envoy needs a CRL from every CA of a
/// chain); then the mesh's CRLs. `previous` is the Secret's files before (the intermediate
/// replaced, signing its last CRL, and the retired CRLs kept so far). None without the mesh's
/// CRLs (they do not cover every CA yet, so nothing goes to Istio).
fn cacerts_crl(
    data: &BTreeMap<String, ByteString>,
    previous: Option<&BTreeMap<String, ByteString>>,
    mesh_crls: Option<&str>,
    now: SystemTime,
    settings: &CacertsSettings,
) -> Result<Option<String>, String> {
    let Some(mesh_crls) = mesh_crls else {
        return Ok(None);
    };
    let (certificate, key) = intermediate_of(data)
        .ok_or_else(|| format!("{CACERTS_SECRET} lacks a readable ca-cert.pem or ca-key.pem"))?;
    let next_update = now + settings.crl_validity;
    let sign = |certificate: &[u8], key: &str| {
        crate::domain::signer::crl::sign_crl_as(certificate, key, &[], now, next_update)
            .map_err(|e| format!("signing the CRL of a cluster intermediate: {e}"))
    };
    let mut out = crate::domain::keys::crl_pem(&sign(&certificate, &key)?);
    if let Some(previous) = previous {
        let replaced = intermediate_of(previous).filter(|(old, _)| *old != certificate);
        if let Some((old, old_key)) = &replaced {
            // Its last CRL, while its leaves may still be in use. An edited Secret whose key is
            // not the certificate's has none to give.
            match sign(old, old_key) {
                Ok(der) => out.push_str(&crate::domain::keys::crl_pem(&der)),
                Err(error) => tracing::warn!(
                    %error,
                    "the replaced intermediate's last CRL could not be signed; leaves it signed \
                     fail Envoy's CRL check"
                ),
            }
        }
        let text = previous
            .get(CACERTS_CRL)
            .and_then(|v| std::str::from_utf8(&v.0).ok())
            .unwrap_or_default();
        for der in crate::domain::keys::parse_crls_pem(text.as_bytes()).unwrap_or_default() {
            let Some(crl) = crl_facts(&der, &certificate) else {
                continue;
            };
            let by_replaced = replaced
                .as_ref()
                .is_some_and(|(old, _)| crl_facts(&der, old).is_some_and(|c| c.by_it));
            if crl.same_name && !crl.by_it && !by_replaced && crl.next_update > now {
                out.push_str(&crate::domain::keys::crl_pem(&der));
            }
        }
    }
    out.push_str(mesh_crls);
    Ok(Some(out))
}

/// The intermediate (DER) and key (PEM) in a Secret's files.
fn intermediate_of(data: &BTreeMap<String, ByteString>) -> Option<(Vec<u8>, String)> {
    use rustls_pki_types::pem::PemObject as _;
    let text = |key: &str| data.get(key).and_then(|v| std::str::from_utf8(&v.0).ok());
    let certificate =
        rustls_pki_types::CertificateDer::from_pem_slice(text("ca-cert.pem")?.as_bytes()).ok()?;
    Some((
        certificate.as_ref().to_vec(),
        text("ca-key.pem")?.to_owned(),
    ))
}

/// A CRL as seen from a cluster intermediate (DER).
struct CrlFacts {
    /// Issued under the intermediate's name (its own, or a replaced one's: they share it).
    same_name: bool,
    /// Signed by the intermediate's key.
    by_it: bool,
    next_update: SystemTime,
}

fn crl_facts(der: &[u8], intermediate: &[u8]) -> Option<CrlFacts> {
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    use x509_parser::revocation_list::CertificateRevocationList;
    let (_, crl) = CertificateRevocationList::from_der(der).ok()?;
    let (_, certificate) = X509Certificate::from_der(intermediate).ok()?;
    let same_name = crl.issuer().as_raw() == certificate.subject().as_raw();
    let next_update =
        crate::domain::clock::time_from_unix_seconds(crl.next_update()?.timestamp()).ok()?;
    Some(CrlFacts {
        same_name,
        by_it: same_name && crl.verify_signature(certificate.public_key()).is_ok(),
        next_update,
    })
}

/// When the Secret's `ca-crl.pem` must be written again, or None when it must be at once. It
/// must be a CRL of the Secret's intermediate (`intermediate`, DER) with more than half of its
/// validity left, then replaced intermediates' CRLs not lapsed, then exactly the mesh's CRLs;
/// and absent when the mesh's CRLs are not for Istio. Some(None): current, nothing to time.
fn crl_refresh_time(
    secret: &Secret,
    mesh_crls: Option<&str>,
    intermediate: &[u8],
    settings: &CacertsSettings,
    now: SystemTime,
) -> Option<Option<SystemTime>> {
    let data = secret.data.as_ref()?;
    let present = data
        .get(CACERTS_CRL)
        .and_then(|v| std::str::from_utf8(&v.0).ok());
    let (Some(mesh_crls), Some(present)) = (mesh_crls, present) else {
        // Neither: current (no CRL for Istio). One without the other: write again.
        return (mesh_crls.is_none() && present.is_none()).then_some(None);
    };
    let ours = present.strip_suffix(mesh_crls)?;
    let crls = crate::domain::keys::parse_crls_pem(ours.as_bytes()).ok()?;
    let (own, retired) = crls.split_first()?;
    let own = crl_facts(own, intermediate).filter(|c| c.by_it)?;
    let mut at = own.next_update.checked_sub(settings.crl_validity / 2)?;
    for der in retired {
        let retired = crl_facts(der, intermediate).filter(|c| c.same_name && !c.by_it)?;
        if retired.next_update <= now {
            return None; // lapsed: leave it out
        }
        at = at.min(retired.next_update);
    }
    Some(Some(at))
}

/// When the Secret's intermediate must be renewed, or None when it must be replaced at once:
/// a file missing or unparsable, another bundle or mesh chain, a key that is not the
/// certificate's.
fn renewal_time(
    secret: &Secret,
    bundle: &str,
    tail: &str,
    renew_at: f64,
) -> Option<(SystemTime, Vec<u8>)> {
    use rustls_pki_types::pem::PemObject as _;
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    let data = secret.data.as_ref()?;
    let text = |key: &str| data.get(key).and_then(|v| std::str::from_utf8(&v.0).ok());
    if FILES.iter().any(|file| text(file).is_none()) {
        return None;
    }
    if text("root-cert.pem")? != bundle {
        return None;
    }
    let ca_cert = text("ca-cert.pem")?;
    let chain = text("cert-chain.pem")?;
    if chain.strip_prefix(ca_cert)? != tail {
        return None;
    }
    let key = rcgen::KeyPair::from_pem(text("ca-key.pem")?).ok()?;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(ca_cert.as_bytes()).ok()?;
    let (_, certificate) = X509Certificate::from_der(der.as_ref()).ok()?;
    if certificate.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key) {
        return None;
    }
    let validity = certificate.validity();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    let at = not_before + ((not_after - not_before) as f64 * renew_at) as i64;
    Some((
        crate::domain::clock::time_from_unix_seconds(at).ok()?,
        der.as_ref().to_vec(),
    ))
}
