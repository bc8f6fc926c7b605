//! Background work and the process's shutdown: a future that gives way when the server stops.

use tokio::sync::watch;

/// Runs `work` unless shutdown comes first (None then): a background loop waiting on the
/// network (a silent Collector, a member or API server that does not answer) must not hold the
/// store past shutdown. Only for work that may stop at any await point and be redone after a
/// restart.
pub(crate) async fn unless_stopped<T>(
    shutdown: &mut watch::Receiver<bool>,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        _ = shutdown.wait_for(|stopped| *stopped) => None,
        done = work => Some(done),
    }
}
