//! `meshroot bench --slow-crl-readers N`: the memory a large CRL costs when its readers read
//! nothing (issue 30, N3). Starts its own `meshroot serve` with the admin port off loopback
//! (TLS, as deployed) and a large CRL among `extra_crls`, opens N TLS connections from a few
//! loopback addresses, sends each a run of pipelined `GET /crl` and never reads, and reports the
//! server's peak RSS while they hang, whether the server closed them, and its RSS once they
//! are gone.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::AsyncWriteExt as _;

use super::failure::Failure;

/// What a run measured.
#[derive(Debug, serde::Serialize)]
pub struct SlowReadersReport {
    pub readers: usize,
    pub requests_per_reader: usize,
    pub crl_bytes: usize,
    pub rss_before_mib: f64,
    /// The largest RSS sampled while the readers hung (every 100 ms).
    pub rss_while_held_mib: f64,
    /// The process's high-water mark (VmHWM) at the end.
    pub peak_rss_mib: f64,
    /// Readers the server had closed by the end of the hold: its side of their connections
    /// had left ESTABLISHED (`/proc/net/tcp`; the FIN waits behind data the reader never read,
    /// so the reader's side cannot tell).
    pub closed_by_server: usize,
    /// Seconds from the last reader's requests until the server's RSS had fallen back below
    /// the midpoint of before and while held (None: it never did within the hold).
    pub seconds_until_released: Option<f64>,
    /// The lowest RSS sampled over the 10 s after every reader was gone.
    pub rss_after_close_mib: f64,
    pub hold_seconds: f64,
}

/// A CRL of `entries` revoked serials from a throw-away CA, PEM: a large CRL such as one
/// broad revocation makes, for `extra_crls`.
pub fn filler_crl(entries: usize, now: SystemTime) -> Result<String, Failure> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, IsCa, Issuer,
        KeyIdMethod, KeyPair, RevokedCertParams, SerialNumber,
    };
    let failure = |e: rcgen::Error| Failure::runtime(e.to_string());
    let key = KeyPair::generate().map_err(failure)?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "meshroot bench filler CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let issuer = Issuer::new(params, key);
    let at = time::OffsetDateTime::from_unix_timestamp(crate::domain::clock::unix_seconds(now))
        .map_err(|e| Failure::runtime(e.to_string()))?;
    let revoked_certs = (0..entries as u64)
        .map(|i| RevokedCertParams {
            serial_number: SerialNumber::from_slice(&(u128::from(i) | 1 << 120).to_be_bytes()),
            revocation_time: at,
            reason_code: Some(rcgen::RevocationReason::KeyCompromise),
            invalidity_date: None,
        })
        .collect();
    let crl = CertificateRevocationListParams {
        this_update: at,
        next_update: at + time::Duration::days(7),
        crl_number: SerialNumber::from_slice(&[1]),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .map_err(failure)?;
    Ok(crate::domain::keys::crl_pem(crl.der()))
}

/// Opens `readers` TLS connections to `admin` (spread over 127.0.0.1–4, under the per-peer
/// cap), sends each `requests` pipelined `GET /crl`, reads nothing for `hold`, then drains
/// each to its end.
pub async fn run(
    admin: SocketAddr,
    root_pem: &str,
    server_pid: u32,
    (readers, requests): (usize, usize),
    hold: Duration,
) -> Result<SlowReadersReport, Failure> {
    use rustls_pki_types::pem::PemObject as _;
    let memory = || crate::edge::cli::loadgen::memory_mib(server_pid).unwrap_or((0.0, 0.0));
    let mut roots = rustls::RootCertStore::empty();
    for root in rustls_pki_types::CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        let root = root.map_err(|e| Failure::runtime(e.to_string()))?;
        roots
            .add(root)
            .map_err(|e| Failure::runtime(e.to_string()))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Failure::runtime(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let request = b"GET /crl HTTP/1.1\r\nhost: localhost\r\n\r\n".repeat(requests);
    let (rss_before_mib, _) = memory();
    let connects = (0..readers).map(|i| {
        let (connector, request) = (connector.clone(), request.clone());
        async move {
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % 4) as u8));
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source, 0))?;
            let target = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), admin.port());
            let tcp = socket.connect(target).await?;
            let name = rustls_pki_types::ServerName::try_from("localhost")
                .map_err(std::io::Error::other)?;
            let mut tls = connector.connect(name, tcp).await?;
            tls.write_all(&request).await?;
            tls.flush().await?;
            Ok::<_, std::io::Error>(tls)
        }
    });
    let opened = futures_util::future::join_all(connects).await;
    let mut streams = Vec::new();
    for stream in opened {
        streams.push(stream.map_err(|e| Failure::runtime(format!("a reader failed: {e}")))?);
    }
    // Hold: read nothing, sample the server's memory.
    let held_from = Instant::now();
    let mut rss_while_held_mib: f64 = 0.0;
    let mut samples = Vec::new();
    while held_from.elapsed() < hold {
        let (rss, _) = memory();
        rss_while_held_mib = rss_while_held_mib.max(rss);
        samples.push((held_from.elapsed(), rss));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let still_open = established_from(admin.port());
    let midpoint = (rss_before_mib + rss_while_held_mib) / 2.0;
    let peak_at = samples
        .iter()
        .position(|(_, rss)| *rss >= rss_while_held_mib)
        .unwrap_or(0);
    let seconds_until_released = samples
        .iter()
        .skip(peak_at)
        .find(|(_, rss)| *rss < midpoint)
        .map(|(at, _)| at.as_secs_f64());
    drop(streams);
    // After they are gone: the lowest of 10 s of samples (the allocator returns freed pages
    // to the system lazily).
    let mut rss_after_close_mib = f64::MAX;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rss_after_close_mib = rss_after_close_mib.min(memory().0);
    }
    let (_, peak_rss_mib) = memory();
    Ok(SlowReadersReport {
        readers,
        requests_per_reader: requests,
        crl_bytes: 0,
        rss_before_mib,
        rss_while_held_mib,
        peak_rss_mib,
        closed_by_server: readers.saturating_sub(still_open),
        seconds_until_released,
        rss_after_close_mib,
        hold_seconds: hold.as_secs_f64(),
    })
}

/// How many of this machine's TCP connections have `port` as their local port and are
/// ESTABLISHED (Linux `/proc/net/tcp` and `tcp6`): the server's side of the readers'
/// connections that it has not closed.
fn established_from(port: u16) -> usize {
    const ESTABLISHED: &str = "01";
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .map(|table| {
            table
                .lines()
                .skip(1)
                .filter(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local = fields
                        .get(1)
                        .and_then(|f| f.rsplit_once(':'))
                        .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
                    local == Some(port) && fields.get(3) == Some(&ESTABLISHED)
                })
                .count()
        })
        .sum()
}
