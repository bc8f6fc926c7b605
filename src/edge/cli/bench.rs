//! `meshroot bench`: a load test of the Istio CSR API. Starts its own `meshroot serve` (a
//! separate process, so its CPU time and memory can be read) or targets a running one, makes
//! every CSR and token before the clock starts, and reports throughput, latency, errors, server
//! CPU per issuance, memory, and the machine's crypto ceiling.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use clap::{Args, ValueEnum};
use rustls_pki_types::pem::PemObject as _;

use super::failure::Failure;
use crate::adapters::authn::jwt::{DevTokenClaims, DevTokenSigner};
use crate::adapters::config::Config;
use crate::domain::identity::TrustDomain;
use crate::domain::keys::KeyType;
use crate::edge::cli::init::{self as scaffold, InitOptions};
use crate::edge::cli::loadgen::{
    self, ConnectionMode, CryptoRates, LoadOptions, LoadReport, PreparedRequest,
};
use crate::edge::client::{self, CsrShape, Target};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A running meshroot to load (HOST:PORT). Without it, bench starts its own.
    #[arg(long)]
    pub addr: Option<String>,
    /// With --addr: the running server's config (its development token issuer mints the
    /// tokens; its root-cert.pem verifies the server).
    #[arg(long, requires = "addr")]
    pub config: Option<PathBuf>,
    /// With --addr: the server's process id, for its CPU time and memory.
    #[arg(long, requires = "addr")]
    pub server_pid: Option<u32>,
    /// The DNS name to expect in the server's certificate.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Concurrent request streams.
    #[arg(long, default_value_t = 64)]
    pub streams: usize,
    #[arg(long, value_enum, default_value_t = ConnectionMode::Warm)]
    pub mode: ConnectionMode,
    /// The CSRs' keys: istio-agent's RSA-2048, ztunnel's P-256, or half each.
    #[arg(long, value_enum, default_value_t = CsrKind::Rsa2048)]
    pub csr: CsrKind,
    /// The intermediate's key type (when bench starts its own server).
    #[arg(long, value_enum, default_value_t = KeyType::EcdsaP256)]
    pub intermediate: KeyType,
    /// Distinct workload identities (each its own CSR and token).
    #[arg(long, default_value_t = 1000)]
    pub identities: usize,
    /// Open loop: offer this many requests per second on a fixed schedule (over --streams
    /// warm connections), timing each from when it was due, so queueing is not hidden by
    /// clients that wait (coordinated omission). Run once without it to find the maximum rate.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Instead of issuing: this many TLS connections that send pipelined `GET /crl` to the
    /// admin port and read nothing, against a large CRL; reports the server's memory while they
    /// hang and after they are gone (issue 30, N3).
    #[arg(long, conflicts_with = "addr")]
    pub slow_crl_readers: Option<usize>,
    /// With --slow-crl-readers: revoked serials in the large CRL (6000 make about 400 KB).
    #[arg(long, default_value_t = 6000)]
    pub crl_entries: usize,
    /// With --slow-crl-readers: pipelined requests each reader sends.
    #[arg(long, default_value_t = 16)]
    pub requests_per_reader: usize,
    /// With --slow-crl-readers: seconds the readers read nothing (the server's
    /// connections.write_timeout is 30 s).
    #[arg(long, default_value_t = 45)]
    pub hold_seconds: u64,
    /// With --slow-crl-readers: how many times, one after the other, against the same server
    /// (memory that is reused rather than grown shows as a flat peak).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// The server bench starts keeps its CA keys in this PKCS#11 token (made there by `init`),
    /// to measure signing in the token against file keys.
    #[command(flatten)]
    pub pkcs11: super::args::Pkcs11Args,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CsrKind {
    #[value(name = "rsa-2048")]
    Rsa2048,
    #[value(name = "ecdsa-p256")]
    EcdsaP256,
    Mixed,
}

#[derive(serde::Serialize)]
struct Report<'a> {
    csr: CsrKind,
    intermediate: String,
    crypto: &'a CryptoRates,
    ceiling_per_second: f64,
    fraction_of_ceiling: f64,
    /// Single-core crypto of one issuance (CSR verify + leaf sign + leaf verify), µs.
    issuance_crypto_us: f64,
    /// The server's CPU per issuance as a multiple of `issuance_crypto_us`.
    server_cpu_multiple: Option<f64>,
    load: &'a LoadReport,
}

pub async fn run(args: BenchArgs) -> Result<(), Failure> {
    if let Some(readers) = args.slow_crl_readers {
        return slow_crl_readers(&args, readers).await;
    }
    let crypto = tokio::task::spawn_blocking(|| CryptoRates::measure(Duration::from_millis(300)))
        .await
        .map_err(|e| Failure::runtime(e.to_string()))?
        .map_err(Failure::runtime)?;
    let (mut server, config_path, address, pid) = match &args.addr {
        Some(addr) => {
            let config = args
                .config
                .clone()
                .ok_or_else(|| Failure::usage("--addr needs --config (to mint tokens)"))?;
            (None, config, addr.clone(), args.server_pid)
        }
        None => {
            let token = match (args.pkcs11.settings()?, &args.pkcs11.pkcs11_token) {
                (Some(settings), Some(token)) => Some(scaffold::TokenKeys {
                    settings,
                    token: token.clone(),
                }),
                _ => None,
            };
            let started = OwnServer::start(
                args.intermediate,
                &Setup {
                    token,
                    ..Setup::default()
                },
            )?;
            let config = started.dir.join("meshroot.toml");
            let (address, pid) = (started.address.clone(), started.child.id());
            (Some(started), config, address, Some(pid))
        }
    };
    let config = Config::load(&config_path)?;
    let requests = tokio::task::spawn_blocking({
        let config = config.clone();
        let (csr, identities) = (args.csr, args.identities.max(1));
        move || make_requests(&config, csr, identities)
    })
    .await
    .map_err(|e| Failure::runtime(e.to_string()))??;
    let root_pem = config
        .meshes
        .first()
        .map(|mesh| mesh.ca_dir.join("root-cert.pem"))
        .and_then(|path| std::fs::read_to_string(path).ok())
        .ok_or_else(|| Failure::runtime("cannot read the mesh's root-cert.pem"))?;
    let target = Target {
        address,
        root_pem,
        server_name: args.server_name.clone(),
        client_identity: None,
    };
    // One call first: fail clearly if the server cannot be reached or refuses the tokens.
    let channel = client::connect(&target)
        .await
        .map_err(|e| Failure::runtime(format!("connecting to {}: {e}", target.address)))?;
    client::create_certificate(
        channel,
        requests[0].csr_pem.clone(),
        86_400,
        &client::AgentMetadata {
            token: Some(requests[0].token.clone()),
            cluster_id: "Kubernetes".into(),
        },
    )
    .await
    .map_err(|status| {
        Failure::runtime(format!(
            "a first request failed: {:?}: {}",
            status.code(),
            status.message()
        ))
    })?;

    let report = loadgen::run(
        &target,
        &requests,
        &LoadOptions {
            streams: args.streams.max(1),
            warmup: Duration::from_secs(args.warmup),
            duration: Duration::from_secs(args.seconds.max(1)),
            mode: args.mode,
            server_pid: pid,
            rate: args.rate,
        },
    )
    .await;
    if let Some(server) = server.as_mut() {
        server.stop();
    }
    print(&args, &crypto, &report)
}

fn print(args: &BenchArgs, crypto: &CryptoRates, load: &LoadReport) -> Result<(), Failure> {
    let csr_rsa = args.csr != CsrKind::EcdsaP256;
    let ceiling = crypto.ceiling(csr_rsa, args.intermediate);
    let crypto_us = crypto.issuance_crypto_us(csr_rsa, args.intermediate);
    let server_cpu_us = load
        .server
        .as_ref()
        .map(|server| 1e6 * server.cpu_seconds / load.issued.max(1) as f64);
    if args.json {
        let report = Report {
            csr: args.csr,
            intermediate: args.intermediate.to_string(),
            crypto,
            ceiling_per_second: ceiling,
            fraction_of_ceiling: load.per_second / ceiling,
            issuance_crypto_us: crypto_us,
            server_cpu_multiple: server_cpu_us.map(|us| us / crypto_us),
            load,
        };
        let json =
            serde_json::to_string_pretty(&report).map_err(|e| Failure::runtime(e.to_string()))?;
        println!("{json}");
        return Ok(());
    }
    println!(
        "machine: {} cores; one core signs P-256 in {:.1} µs, RSA-2048 in {:.0} µs, RSA-4096 in {:.0} µs ({}); \
         verifies P-256 in {:.1} µs, RSA-2048 in {:.1} µs (ring)",
        crypto.cores,
        crypto.p256_sign_us,
        crypto.rsa2048_sign_us,
        crypto.rsa4096_sign_us,
        crypto.signing_backend,
        crypto.p256_verify_us,
        crypto.rsa2048_verify_us
    );
    println!(
        "ceiling: {:.0} issuances/s ({} cores doing nothing but checking {} CSR signatures and signing with the {} intermediate)",
        ceiling,
        crypto.cores,
        if csr_rsa { "RSA-2048" } else { "P-256" },
        args.intermediate
    );
    let pacing = match load.offered_per_second {
        Some(rate) => format!("open loop at {rate:.0} requests/s over "),
        None => String::new(),
    };
    println!(
        "load: {pacing}{} streams, {}, {:?} CSRs, {:.1} s measured after {} s of warm-up",
        load.streams,
        match load.mode {
            ConnectionMode::Warm => "warm connections",
            ConnectionMode::NewConnection => "a new TLS connection per request",
        },
        args.csr,
        load.seconds,
        args.warmup
    );
    println!(
        "issued {} = {:.0}/s ({:.1} % of the ceiling); latency ms p50 {:.2}, p90 {:.2}, p99 {:.2}, p99.9 {:.2}, max {:.2}",
        load.issued,
        load.per_second,
        100.0 * load.per_second / ceiling,
        load.latency_ms.p50,
        load.latency_ms.p90,
        load.latency_ms.p99,
        load.latency_ms.p99_9,
        load.latency_ms.max
    );
    if load.errors.is_empty() {
        println!("errors: none");
    } else {
        let list: Vec<String> = load
            .errors
            .iter()
            .map(|(code, n)| format!("{code} {n}"))
            .collect();
        println!("errors: {}", list.join(", "));
    }
    if let (Some(server), Some(cpu_us)) = (&load.server, server_cpu_us) {
        println!(
            "server: {:.0} µs CPU per issuance = {:.2}× the single-core crypto of one issuance ({:.0} µs: CSR verify + leaf sign + leaf verify); {:.2} CPU s in all",
            cpu_us,
            cpu_us / crypto_us,
            crypto_us,
            server.cpu_seconds
        );
        println!(
            "server memory: peak RSS {:.1} MiB (RSS {:.1} → {:.1} MiB over the run)",
            server.peak_rss_mib, server.rss_start_mib, server.rss_end_mib
        );
        if !server.rss_samples_mib.is_empty() {
            let samples: Vec<String> = server
                .rss_samples_mib
                .iter()
                .map(|mib| format!("{mib:.0}"))
                .collect();
            println!(
                "server RSS every tenth of the run (MiB): {}",
                samples.join(" ")
            );
        }
    }
    println!(
        "load client: {:.0} µs CPU per issuance",
        1e6 * load.client.cpu_seconds / load.issued.max(1) as f64
    );
    Ok(())
}

/// CSRs shaped like istio-agent's (RSA-2048) or ztunnel's (P-256) and tokens from the mesh's
/// development issuer, one per identity. RSA keys come from a small pool: generating them is
/// not what is measured, and the server does not care who else holds a key.
fn make_requests(
    config: &Config,
    csr: CsrKind,
    identities: usize,
) -> Result<Vec<PreparedRequest>, Failure> {
    let mesh = config
        .meshes
        .first()
        .ok_or_else(|| Failure::runtime("the config has no mesh"))?;
    let issuer = mesh
        .token_issuers
        .iter()
        .find(|issuer| issuer.dev_signing_key.is_some())
        .ok_or_else(|| {
            Failure::usage(format!(
                "mesh {} has no development token issuer to mint the tokens with",
                mesh.name
            ))
        })?;
    let key_path = issuer.dev_signing_key.as_deref().unwrap_or(Path::new(""));
    let pem = std::fs::read(key_path)
        .map_err(|e| Failure::runtime(format!("{}: {e}", key_path.display())))?;
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(&pem)
        .map_err(|_| Failure::runtime(format!("{}: not a PKCS#8 key", key_path.display())))?;
    let signer = DevTokenSigner::from_pkcs8(der.secret_pkcs8_der())
        .map_err(|e| Failure::runtime(e.to_string()))?;
    let key_failure = |e: crate::domain::keys::KeyError| Failure::runtime(e.to_string());
    let rsa_pool = (0..8.min(identities))
        .map(|_| KeyType::Rsa2048.generate().map_err(key_failure))
        .collect::<Result<Vec<_>, _>>()?;
    let now = crate::domain::clock::unix_seconds(SystemTime::now());
    (0..identities)
        .map(|i| {
            let (namespace, account) = (format!("bench-ns{}", i % 50), format!("sa{i}"));
            let id = format!("spiffe://{}/ns/{namespace}/sa/{account}", mesh.trust_domain);
            let rsa = match csr {
                CsrKind::Rsa2048 => true,
                CsrKind::EcdsaP256 => false,
                CsrKind::Mixed => i % 2 == 0,
            };
            let csr_pem = if rsa {
                client::build_csr(&rsa_pool[i % rsa_pool.len()], &CsrShape::istio_agent(&id))
            } else {
                let key = KeyType::EcdsaP256.generate().map_err(key_failure)?;
                client::build_csr(&key, &CsrShape::ztunnel(&id))
            }
            .map_err(|e| Failure::runtime(e.to_string()))?;
            let token = signer
                .sign(&DevTokenClaims {
                    issuer: &issuer.issuer,
                    audiences: &issuer.audiences,
                    namespace: &namespace,
                    service_account: &account,
                    issued_at: now,
                    lifetime: Duration::from_secs(12 * 3600),
                    bound_pod: None,
                })
                .map_err(|e| Failure::runtime(e.to_string()))?;
            Ok(PreparedRequest { csr_pem, token })
        })
        .collect()
}

/// `--slow-crl-readers`: the readers against bench's own server, admin port on TLS.
async fn slow_crl_readers(args: &BenchArgs, readers: usize) -> Result<(), Failure> {
    let crl = super::slow_readers::filler_crl(args.crl_entries, SystemTime::now())?;
    let crl_bytes = crl.len();
    let mut server = OwnServer::start(
        args.intermediate,
        &Setup {
            admin_tls: true,
            extra_crl: Some(crl),
            token: None,
        },
    )?;
    let root_pem = std::fs::read_to_string(server.dir.join("root-cert.pem"))
        .map_err(|e| Failure::runtime(e.to_string()))?;
    let admin = server
        .admin
        .parse()
        .map_err(|_| Failure::runtime(format!("admin address {:?}", server.admin)))?;
    let mut reports = Vec::new();
    for _ in 0..args.rounds.max(1) {
        let report = super::slow_readers::run(
            admin,
            &root_pem,
            server.child.id(),
            (readers, args.requests_per_reader.max(1)),
            Duration::from_secs(args.hold_seconds),
        )
        .await;
        match report {
            Ok(report) => reports.push(super::slow_readers::SlowReadersReport {
                crl_bytes,
                ..report
            }),
            Err(error) => {
                server.stop();
                return Err(error);
            }
        }
    }
    server.stop();
    if args.json {
        let json =
            serde_json::to_string_pretty(&reports).map_err(|e| Failure::runtime(e.to_string()))?;
        println!("{json}");
        return Ok(());
    }
    for (round, report) in reports.iter().enumerate() {
        println!("round {}:", round + 1);
        print_slow_readers(report);
    }
    Ok(())
}

fn print_slow_readers(report: &super::slow_readers::SlowReadersReport) {
    println!(
        "{} readers x {} pipelined GET /crl of {:.0} KB over TLS, none read for {:.0} s",
        report.readers,
        report.requests_per_reader,
        report.crl_bytes as f64 / 1000.0,
        report.hold_seconds
    );
    println!(
        "server RSS: {:.1} MiB before, at most {:.1} MiB while they hung (peak {:.1} MiB), {:.1} MiB after they closed",
        report.rss_before_mib,
        report.rss_while_held_mib,
        report.peak_rss_mib,
        report.rss_after_close_mib
    );
    println!(
        "closed by the server: {} of {}; memory released {}",
        report.closed_by_server,
        report.readers,
        match report.seconds_until_released {
            Some(s) => format!("{s:.1} s into the hold"),
            None => "not within the hold".into(),
        }
    );
}

/// How bench's own server differs from `init`'s.
#[derive(Default)]
struct Setup {
    /// The admin port off loopback (TLS, as deployed).
    admin_tls: bool,
    /// A CRL to publish among `extra_crls`.
    extra_crl: Option<String>,
    /// CA keys in a token.
    token: Option<scaffold::TokenKeys>,
}

/// A `meshroot serve` started by bench in a fresh directory (removed afterwards).
struct OwnServer {
    dir: PathBuf,
    child: Child,
    address: String,
    admin: String,
}

impl OwnServer {
    fn start(intermediate: KeyType, setup: &Setup) -> Result<Self, Failure> {
        let dir = std::env::temp_dir().join(format!(
            "meshroot-bench-{}-{}",
            std::process::id(),
            crate::domain::clock::unix_millis(SystemTime::now())
        ));
        scaffold::init(
            &InitOptions {
                dir: dir.clone(),
                meshes: vec![(
                    "default".into(),
                    TrustDomain::new("cluster.local")
                        .map_err(|e| Failure::runtime(e.to_string()))?,
                )],
                key_type: intermediate,
                dev_issuer: true,
                name_constraints: true,
                intermediate_path_len: 0,
                token: setup.token.clone(),
                // A bench's keys in a token are labelled as any init's: replace them.
                force: setup.token.is_some(),
                workloads: crate::domain::capacity::DEFAULT_WORKLOADS,
            },
            SystemTime::now(),
        )
        .map_err(|e| Failure::runtime(e.to_string()))?;
        // The load comes from one machine with a few thousand identities in 50 namespaces:
        // the per-caller and per-namespace limits, and the per-peer connection caps, would
        // measure themselves, so they are off.
        let config_path = dir.join("meshroot.toml");
        let mut config =
            std::fs::read_to_string(&config_path).map_err(|e| Failure::runtime(e.to_string()))?;
        if let Some(crl) = &setup.extra_crl {
            std::fs::write(dir.join("filler-crl.pem"), crl)
                .map_err(|e| Failure::runtime(e.to_string()))?;
            config = config.replace(
                "extra_crls = [\"root-crl.pem\"]",
                "extra_crls = [\"root-crl.pem\", \"filler-crl.pem\"]",
            );
        }
        if setup.admin_tls {
            config = config.replace(
                "[admin]\n",
                "[admin]\nallowed_identities = [\"spiffe://cluster.local/ns/bench/sa/auditor\"]\n",
            );
        }
        std::fs::write(
            &config_path,
            format!(
                "{config}\n[rate_limit]\nper_caller = 0.0\nper_namespace = 0.0\n\
                 [connections]\nmax_per_peer = 4096\nmax_handshakes_per_peer = 4096\n"
            ),
        )
        .map_err(|e| Failure::runtime(e.to_string()))?;
        // Another build of the server may be measured against this one (A/B).
        let exe = match std::env::var_os("MESHROOT_BENCH_SERVER") {
            Some(other) => PathBuf::from(other),
            None => std::env::current_exe().map_err(|e| Failure::runtime(e.to_string()))?,
        };
        let admin_listen = if setup.admin_tls {
            "0.0.0.0:0"
        } else {
            "127.0.0.1:0"
        };
        let mut child = Command::new(exe)
            .args(["serve", "--config"])
            .arg(dir.join("meshroot.toml"))
            .env("MESHROOT_LISTEN", "127.0.0.1:0")
            .env("MESHROOT_ADMIN_LISTEN", admin_listen)
            .env("MESHROOT_LOG", "warn")
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Failure::runtime(format!("starting meshroot serve: {e}")))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| Failure::runtime("no stderr from meshroot serve"))?;
        let mut lines = BufReader::new(stderr).lines();
        let marker = "serving the Istio CSR API on ";
        let (address, admin) = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(rest) = line.split(marker).nth(1) {
                        // "<csr address> and the audit API on <admin address> (config …"
                        let words: Vec<&str> = rest.split_whitespace().collect();
                        let word = |at: usize| words.get(at).copied().unwrap_or_default();
                        break (word(0).to_owned(), word(6).to_owned());
                    }
                    eprintln!("{line}");
                }
                _ => {
                    let _ = child.kill();
                    return Err(Failure::runtime("meshroot serve exited before serving"));
                }
            }
        };
        // Keep reading its log, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                eprintln!("server: {line}");
            }
        });
        Ok(Self {
            dir,
            child,
            address,
            admin,
        })
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
