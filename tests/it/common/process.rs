//! A `meshroot serve` process, as a user or an orchestrator runs it.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

pub const BINARY: &str = env!("CARGO_BIN_EXE_meshroot");

/// `meshroot ARGS` run to its end on a blocking thread (a server it talks to may run on the
/// calling test's runtime).
async fn run(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::new(BINARY)
            .args(&args)
            .env("MESHROOT_LOG", "warn")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// `meshroot ARGS`: its stdout, failing with its stderr if it did not succeed.
pub async fn meshroot_output(args: Vec<String>) -> String {
    let output = run(args).await;
    assert!(
        output.status.success(),
        "meshroot failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `meshroot ARGS`: its exit code, then stdout and stderr together (for commands whose
/// failures are part of what is tested).
pub async fn meshroot_status(args: &[&str]) -> (i32, String) {
    let output = run(args.iter().map(|a| a.to_string()).collect()).await;
    (
        output.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// A `meshroot serve` process (killed if dropped before `stop`).
pub struct Serving {
    pub child: Child,
    pub address: String,
    /// The admin address (audit API).
    pub admin_address: String,
    /// Every line the server wrote to stderr (its log), collected in the background.
    log: Arc<Mutex<Vec<String>>>,
    log_reader: Option<std::thread::JoinHandle<()>>,
}

impl Serving {
    /// Starts `meshroot serve ARGS` in `dir` on an ephemeral port and waits for its
    /// "serving" line (no sleeps).
    pub fn start(dir: &Path, args: &[&str]) -> Self {
        Self::start_with_env(dir, args, &[])
    }

    /// [`Serving::start`] with extra environment variables.
    pub fn start_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(BINARY)
            .arg("serve")
            .args(args)
            .current_dir(dir)
            .env("MESHROOT_LISTEN", "127.0.0.1:0")
            .env("MESHROOT_ADMIN_LISTEN", "127.0.0.1:0")
            .env("MESHROOT_LOG", "debug")
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let marker = "serving the Istio CSR API on ";
        let log = Arc::new(Mutex::new(Vec::new()));
        let (address, admin_address) = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| {
                    let log = log.lock().unwrap();
                    let tail = &log[log.len().saturating_sub(15)..];
                    panic!(
                        "serve exited: {:?}; the last lines:\n{}",
                        child.wait(),
                        tail.join("\n")
                    )
                })
                .unwrap();
            log.lock().unwrap().push(line.clone());
            if let Some(rest) = line.split(marker).nth(1) {
                let words: Vec<&str> = rest.split_whitespace().collect();
                // "<csr address> and the audit API on <admin address> (config …"
                break (words[0].to_owned(), words[6].to_owned());
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        let collected = log.clone();
        let log_reader = std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                collected.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            address,
            admin_address,
            log,
            log_reader: Some(log_reader),
        }
    }

    /// Waits (bounded) until the log holds a line containing `needle`.
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !self
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains(needle))
        {
            if std::time::Instant::now() >= deadline {
                let log = self.log.lock().unwrap();
                // The last lines that are not the HTTP/2 library's own.
                let ours: Vec<&String> = log.iter().filter(|l| !l.contains(" h2::")).collect();
                let tail = &ours[ours.len().saturating_sub(15)..];
                panic!(
                    "no log line {needle:?}; the last lines:\n{}",
                    tail.iter()
                        .map(|l| l.as_str())
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// How many lines of the log so far contain `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.contains(needle))
            .count()
    }

    /// Waits (bounded) until more than `seen` lines contain `needle`; returns the last one.
    pub fn wait_for_more_log(&self, needle: &str, seen: usize) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            {
                let log = self.log.lock().unwrap();
                let matching: Vec<&String> =
                    log.iter().filter(|line| line.contains(needle)).collect();
                if matching.len() > seen {
                    return matching[matching.len() - 1].clone();
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no new log line {needle:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args([name, &pid])
            .status()
            .unwrap()
            .success());
    }

    /// The whole log, once the process has ended.
    pub fn log(&mut self) -> String {
        if let Some(reader) = self.log_reader.take() {
            reader.join().unwrap();
        }
        self.log.lock().unwrap().join("\n")
    }

    /// SIGKILL: no chance to flush or checkpoint.
    pub fn kill(&mut self) {
        self.signal("-KILL");
        let _ = self.child.wait();
    }

    /// SIGTERM, then asserts that the server shut down cleanly (exit code 0, not killed).
    pub fn stop(&mut self) {
        self.signal("-TERM");
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "SIGTERM must end serve cleanly, got {status:?}; log:\n{}",
            self.log()
        );
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}
