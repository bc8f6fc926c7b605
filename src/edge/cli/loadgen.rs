//! The load generator behind `meshroot bench`: istio-agent-shaped requests from many concurrent
//! streams, on warm connections or a new TLS connection per request (a restart storm), with
//! latency percentiles, errors by gRPC code, the server's CPU time and memory (read from
//! `/proc`), and the machine's raw single-core crypto rates for scale.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::edge::client::{self, AgentMetadata, Target};

/// How clients connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionMode {
    /// One long-lived HTTP/2 connection per stream (steady renewals).
    Warm,
    /// A new TLS connection for every request (every proxy starting at once).
    NewConnection,
}

/// One request, made before the clock starts.
#[derive(Debug, Clone)]
pub struct PreparedRequest {
    pub csr_pem: String,
    pub token: String,
}

/// What a run measures.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub streams: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub mode: ConnectionMode,
    /// The server's process id, for its CPU time and memory.
    pub server_pid: Option<u32>,
    /// Open loop: start requests at this many per second on a fixed schedule, whether or not
    /// earlier ones have been answered, and time each from when it was due (so a stalled server
    /// shows as latency, not as fewer requests). None: closed loop, each stream sends its next
    /// request when the last is answered.
    pub rate: Option<f64>,
}

/// In open loop, requests due while this many are still unanswered are not sent but counted as
/// errors ("client backlog"): the server is far past the offered rate.
const MAX_OUTSTANDING: usize = 20_000;

/// Latencies (µs) of the answered requests and failures by gRPC code, within the measured
/// window.
type Outcomes = (Vec<u64>, BTreeMap<String, u64>);

/// Resource use of a process over the measured window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcessUsage {
    pub cpu_seconds: f64,
    /// The highest resident set size the process reached (VmHWM), in MiB.
    pub peak_rss_mib: f64,
    /// Resident set size at the start and at the end of the measured window, in MiB.
    pub rss_start_mib: f64,
    pub rss_end_mib: f64,
    /// Resident set size sampled every tenth of the measured window, in MiB.
    pub rss_samples_mib: Vec<f64>,
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub streams: usize,
    pub mode: ConnectionMode,
    /// The offered rate of an open-loop run (requests/s); None for a closed loop.
    pub offered_per_second: Option<f64>,
    pub seconds: f64,
    pub issued: u64,
    pub per_second: f64,
    pub latency_ms: Percentiles,
    /// Failed calls by gRPC code.
    pub errors: BTreeMap<String, u64>,
    pub server: Option<ProcessUsage>,
    pub client: ProcessUsage,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(mut micros: Vec<u64>) -> Self {
        micros.sort_unstable();
        let at = |p: f64| {
            if micros.is_empty() {
                return 0.0;
            }
            let index = ((micros.len() as f64 - 1.0) * p).round() as usize;
            micros[index] as f64 / 1000.0
        };
        Self {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p99_9: at(0.999),
            max: at(1.0),
        }
    }
}

/// Drives `requests` (round-robin over the streams) against `target`.
pub async fn run(
    target: &Target,
    requests: &[PreparedRequest],
    options: &LoadOptions,
) -> LoadReport {
    let requests: Arc<Vec<PreparedRequest>> = Arc::new(requests.to_vec());
    let started = Instant::now();
    let measure_from = started + options.warmup;
    let end = measure_from + options.duration;
    let sampler = {
        let pid = options.server_pid;
        tokio::spawn(async move {
            // RSS when measuring starts and CPU time then (the warm-up excluded).
            tokio::time::sleep_until(measure_from.into()).await;
            (
                pid.and_then(|pid| read_usage(&format!("/proc/{pid}"))),
                read_usage("/proc/self"),
            )
        })
    };
    let rss_series = {
        let (pid, step) = (options.server_pid, options.duration / 10);
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let Some(pid) = pid else { return samples };
            for k in 1..=10u32 {
                tokio::time::sleep_until((measure_from + step * k).into()).await;
                if let Some(sample) = read_usage(&format!("/proc/{pid}")) {
                    samples.push(sample.rss_mib);
                }
            }
            samples
        })
    };
    let (latencies, errors) = match options.rate {
        None => closed_loop(target, requests, options, measure_from, end).await,
        Some(rate) => open_loop(target, requests, options, rate, measure_from, end).await,
    };
    let finished = Instant::now();
    let (server_before, client_before) = sampler.await.unwrap_or((None, None));
    rss_series.abort();
    let rss_samples = rss_series.await.unwrap_or_default();
    let seconds = finished
        .saturating_duration_since(measure_from)
        .as_secs_f64()
        .max(1e-9);
    let issued = latencies.len() as u64;
    let usage = |before: Option<Sample>, path: &str, samples: Vec<f64>| {
        let after = read_usage(path)?;
        let before = before?;
        Some(ProcessUsage {
            cpu_seconds: after.cpu_seconds - before.cpu_seconds,
            peak_rss_mib: after.peak_rss_mib,
            rss_start_mib: before.rss_mib,
            rss_end_mib: after.rss_mib,
            rss_samples_mib: samples,
        })
    };
    LoadReport {
        streams: options.streams,
        mode: options.mode,
        offered_per_second: options.rate,
        seconds,
        issued,
        per_second: issued as f64 / seconds,
        latency_ms: Percentiles::of(latencies),
        errors,
        server: options
            .server_pid
            .and_then(|pid| usage(server_before, &format!("/proc/{pid}"), rss_samples)),
        client: usage(client_before, "/proc/self", Vec::new()).unwrap_or_default(),
    }
}

/// Each of `options.streams` streams sends its next request when the last is answered.
async fn closed_loop(
    target: &Target,
    requests: Arc<Vec<PreparedRequest>>,
    options: &LoadOptions,
    measure_from: Instant,
    end: Instant,
) -> Outcomes {
    let streams = options.streams;
    let mut tasks = Vec::with_capacity(streams);
    for stream in 0..streams {
        let (target, requests, mode) = (target.clone(), requests.clone(), options.mode);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut warm: Option<tonic::transport::Channel> = None;
            let mut round = 0usize;
            while Instant::now() < end {
                // Stream s sends requests s, s + streams, s + 2·streams, …
                let request = &requests[(stream + round * streams) % requests.len()];
                round += 1;
                let begun = Instant::now();
                let channel = warm.clone().filter(|_| mode == ConnectionMode::Warm);
                let (used, result) = send(&target, channel, request).await;
                if mode == ConnectionMode::Warm && used.is_some() {
                    warm = used;
                }
                if begun < measure_from {
                    continue;
                }
                match result {
                    Ok(()) => latencies.push(begun.elapsed().as_micros() as u64),
                    Err(code) => {
                        *errors.entry(code).or_default() += 1;
                        // A refused connection must not spin.
                        if warm.is_none() {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for task in tasks {
        if let Ok((mine, failed)) = task.await {
            latencies.extend(mine);
            for (code, count) in failed {
                *errors.entry(code).or_default() += count;
            }
        }
    }
    (latencies, errors)
}

/// One request, on `channel` or (none) a new connection; returns the connection it used (None
/// when connecting failed) and the outcome (a failure as its gRPC code).
async fn send(
    target: &Target,
    channel: Option<tonic::transport::Channel>,
    request: &PreparedRequest,
) -> (Option<tonic::transport::Channel>, Result<(), String>) {
    let channel = match channel {
        Some(channel) => channel,
        None => match client::connect(target).await {
            Ok(channel) => channel,
            Err(error) => return (None, Err(format!("connect: {error}"))),
        },
    };
    let result = client::create_certificate(
        channel.clone(),
        request.csr_pem.clone(),
        86_400,
        &AgentMetadata {
            token: Some(request.token.clone()),
            cluster_id: "Kubernetes".into(),
        },
    )
    .await
    .map(|_| ())
    .map_err(|status| format!("{:?}", status.code()));
    (Some(channel), result)
}

/// Starts request i at `i / rate` seconds, each on its own task, over `options.streams` warm
/// connections (round-robin) or a new connection each, and times it from when it was due.
async fn open_loop(
    target: &Target,
    requests: Arc<Vec<PreparedRequest>>,
    options: &LoadOptions,
    rate: f64,
    measure_from: Instant,
    end: Instant,
) -> Outcomes {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut channels = Vec::new();
    if options.mode == ConnectionMode::Warm {
        for _ in 0..options.streams {
            match client::connect(target).await {
                Ok(channel) => channels.push(channel),
                Err(error) => *errors.entry(format!("connect: {error}")).or_default() += 1,
            }
        }
        if channels.is_empty() {
            return (Vec::new(), errors);
        }
    }
    let (done, mut answers) = tokio::sync::mpsc::unbounded_channel();
    let outstanding = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut backlog = 0u64;
    for i in 0u64.. {
        let due = start + Duration::from_secs_f64(i as f64 / rate.max(1e-3));
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let measured = due >= measure_from;
        if outstanding.load(Ordering::Relaxed) >= MAX_OUTSTANDING {
            backlog += u64::from(measured);
            continue;
        }
        outstanding.fetch_add(1, Ordering::Relaxed);
        let index = i as usize;
        let channel = (!channels.is_empty()).then(|| channels[index % channels.len()].clone());
        let (target, requests, done, outstanding) = (
            target.clone(),
            requests.clone(),
            done.clone(),
            outstanding.clone(),
        );
        tokio::spawn(async move {
            let request = &requests[index % requests.len()];
            let (_, result) = send(&target, channel, request).await;
            let micros = due.elapsed().as_micros() as u64;
            outstanding.fetch_sub(1, Ordering::Relaxed);
            if measured {
                let _ = done.send(result.map(|_| micros));
            }
        });
    }
    drop(done);
    let mut latencies = Vec::new();
    // Requests still unanswered this long after the end are counted as lost.
    let give_up = tokio::time::Instant::from(end) + Duration::from_secs(30);
    while let Ok(Some(answer)) = tokio::time::timeout_at(give_up, answers.recv()).await {
        match answer {
            Ok(micros) => latencies.push(micros),
            Err(code) => *errors.entry(code).or_default() += 1,
        }
    }
    if backlog > 0 {
        errors.insert("client backlog (not sent)".into(), backlog);
    }
    (latencies, errors)
}

/// A process's resident set size and its high-water mark (VmRSS, VmHWM), in MiB.
pub(crate) fn memory_mib(pid: u32) -> Option<(f64, f64)> {
    read_usage(&format!("/proc/{pid}")).map(|sample| (sample.rss_mib, sample.peak_rss_mib))
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    cpu_seconds: f64,
    rss_mib: f64,
    peak_rss_mib: f64,
}

/// CPU time (user + system) and memory of a process, from `/proc/<pid>/{stat,status}`.
fn read_usage(process: &str) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("{process}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5): 12th and 13th after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("{process}/status")).ok()?;
    let kib = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse::<f64>().ok())
    };
    Some(Sample {
        // USER_HZ, the unit of /proc times, is 100 on Linux.
        cpu_seconds: ticks / 100.0,
        rss_mib: kib("VmRSS:")? / 1024.0,
        peak_rss_mib: kib("VmHWM:")? / 1024.0,
    })
}

/// Single-core rates of the signature operations an issuance needs, measured with ring on this
/// machine.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CryptoRates {
    pub cores: usize,
    /// Microseconds per operation.
    pub rsa2048_verify_us: f64,
    pub rsa4096_verify_us: f64,
    pub p256_verify_us: f64,
    pub p256_sign_us: f64,
    pub rsa2048_sign_us: f64,
    pub rsa4096_sign_us: f64,
    /// What signs leaves: "ring", or "aws-lc" with the `aws-lc` feature.
    pub signing_backend: &'static str,
}

impl CryptoRates {
    /// Measures each operation for about `budget`.
    pub fn measure(budget: Duration) -> Result<Self, String> {
        use ring::signature;
        let message = [7u8; 256];
        let time = |mut operation: Box<dyn FnMut() -> bool + '_>| {
            let started = Instant::now();
            let mut count = 0u64;
            while started.elapsed() < budget || count < 3 {
                if !operation() {
                    return f64::NAN;
                }
                count += 1;
            }
            started.elapsed().as_secs_f64() * 1e6 / count as f64
        };
        // Signatures as the issuer makes them (rcgen, on ring or AWS-LC); verifications as
        // meshroot checks CSRs and tokens (ring).
        let generate =
            |key_type: crate::domain::keys::KeyType| key_type.generate().map_err(|e| e.to_string());
        let p256 = generate(crate::domain::keys::KeyType::EcdsaP256)?;
        let rsa2048 = generate(crate::domain::keys::KeyType::Rsa2048)?;
        let rsa4096 = generate(crate::domain::keys::KeyType::Rsa4096)?;
        use rcgen::{PublicKeyData as _, SigningKey as _};
        let p256_sig = p256.sign(&message).map_err(|e| e.to_string())?;
        let rsa_sig = rsa2048.sign(&message).map_err(|e| e.to_string())?;
        let rsa4096_sig = rsa4096.sign(&message).map_err(|e| e.to_string())?;
        let spki_key = |key: &rcgen::KeyPair| -> Result<Vec<u8>, String> {
            use x509_parser::prelude::FromDer as _;
            let spki = key.subject_public_key_info();
            let (_, parsed) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki)
                .map_err(|e| e.to_string())?;
            Ok(parsed.subject_public_key.data.to_vec())
        };
        let p256_public =
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, spki_key(&p256)?);
        let rsa_public = signature::UnparsedPublicKey::new(
            &signature::RSA_PKCS1_2048_8192_SHA256,
            spki_key(&rsa2048)?,
        );
        let rsa4096_public = signature::UnparsedPublicKey::new(
            &signature::RSA_PKCS1_2048_8192_SHA256,
            spki_key(&rsa4096)?,
        );
        Ok(Self {
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            rsa2048_verify_us: time(Box::new(|| rsa_public.verify(&message, &rsa_sig).is_ok())),
            rsa4096_verify_us: time(Box::new(|| {
                rsa4096_public.verify(&message, &rsa4096_sig).is_ok()
            })),
            p256_verify_us: time(Box::new(|| {
                p256_public.verify(&message, p256_sig.as_ref()).is_ok()
            })),
            p256_sign_us: time(Box::new(|| p256.sign(&message).is_ok())),
            rsa2048_sign_us: time(Box::new(|| rsa2048.sign(&message).is_ok())),
            rsa4096_sign_us: time(Box::new(|| rsa4096.sign(&message).is_ok())),
            signing_backend: crate::domain::keys::SIGNING_BACKEND,
        })
    }

    /// The single-core crypto of one issuance, in µs: verifying the CSR's signature, signing
    /// the leaf, and verifying the leaf's signature (as every leaf once was). The server's CPU
    /// per issuance is judged as a multiple of this, so runs on faster or slower machines
    /// compare.
    pub fn issuance_crypto_us(
        &self,
        csr_rsa: bool,
        intermediate: crate::domain::keys::KeyType,
    ) -> f64 {
        use crate::domain::keys::KeyType;
        let csr_verify = if csr_rsa {
            self.rsa2048_verify_us
        } else {
            self.p256_verify_us
        };
        let (sign, leaf_verify) = match intermediate {
            KeyType::EcdsaP256 => (self.p256_sign_us, self.p256_verify_us),
            KeyType::Rsa2048 => (self.rsa2048_sign_us, self.rsa2048_verify_us),
            KeyType::Rsa4096 => (self.rsa4096_sign_us, self.rsa4096_verify_us),
        };
        csr_verify + sign + leaf_verify
    }

    /// Issuances per second the machine's cores allow for the unavoidable crypto of one
    /// issuance: checking the CSR's signature and signing the leaf.
    pub(crate) fn ceiling(&self, csr_rsa: bool, intermediate: crate::domain::keys::KeyType) -> f64 {
        let verify = if csr_rsa {
            self.rsa2048_verify_us
        } else {
            self.p256_verify_us
        };
        let sign = match intermediate {
            crate::domain::keys::KeyType::EcdsaP256 => self.p256_sign_us,
            crate::domain::keys::KeyType::Rsa2048 => self.rsa2048_sign_us,
            crate::domain::keys::KeyType::Rsa4096 => self.rsa4096_sign_us,
        };
        self.cores as f64 * 1e6 / (verify + sign)
    }
}
