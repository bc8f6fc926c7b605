//! The `meshroot` binary: logging (to a terminal or as JSON lines), the tokio runtime, and
//! `edge::cli::run`; every command is in the library, so the tests run the same code.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

// glibc's malloc showed up at ~10 % of a loaded server's profile, with arena-lock futex
// calls; mimalloc's per-thread heaps cut that (measured with `meshroot bench`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = meshroot::edge::cli::Cli::parse();
    let filter =
        || EnvFilter::try_from_env("MESHROOT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // MESHROOT_LOG_FORMAT=json: one JSON object per line (for log pipelines in clusters).
    if std::env::var("MESHROOT_LOG_FORMAT").as_deref() == Ok("json") {
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("meshroot: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // rustls cannot choose a process-wide provider itself with two built in (ring, and AWS-LC
    // for the post-quantum key exchange): ring, for any client built without an explicit one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let status = meshroot::edge::cli::exit_status(runtime.block_on(meshroot::edge::cli::run(cli)));
    let _ = std::io::Write::flush(&mut std::io::stdout());
    // Exit without dropping the runtime: its drop would wait for blocking tasks without limit,
    // and a shutdown that gave up on a failed disk (a flush that never returns) must still
    // end the process. Everything that had to be written was, or the status says it was not.
    std::process::exit(i32::from(status))
}
