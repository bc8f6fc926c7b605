//! Leader election over a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does:
//! the holder renews `renewTime` every `renew_interval`; another replica takes the Lease over only
//! after it has seen the same record unchanged for a whole `leaseDurationSeconds` (measured on its
//! own monotonic clock, so clock skew between nodes does not matter). Every write carries the
//! `resourceVersion` it read, so of two replicas racing for the Lease the API server lets exactly
//! one win (the other gets 409 Conflict). A leader that cannot renew for `renew_deadline` steps
//! down before anyone else may take over; a stopping leader releases the Lease at once.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

/// Where the Lease lives and who this replica is.
#[derive(Debug, Clone)]
pub(crate) struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's name in `holderIdentity` (the pod name).
    pub identity: String,
    /// `leaseDurationSeconds`: how long others wait before taking over a silent holder.
    pub duration: Duration,
}

impl LeaseSettings {
    /// The holder renews this often.
    pub(crate) fn renew_interval(&self) -> Duration {
        self.duration / 3
    }

    /// A holder that has not renewed for this long stops acting as leader: two thirds of the
    /// duration, so it has stopped before another replica can take over.
    pub(crate) fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    /// A follower (or a failed attempt) tries again this often.
    pub(crate) fn retry_interval(&self) -> Duration {
        (self.duration / 5).max(Duration::from_millis(100))
    }
}

/// What one attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// We hold the Lease (acquired or renewed).
    Held,
    /// Somebody else holds it, or won a race for it.
    Other,
}

/// The Lease as last observed, and when (local monotonic time) it was first seen that way.
struct Observed {
    resource_version: String,
    since: Instant,
}

/// Runs the election until `shutdown`, publishing whether this replica leads on `leader`.
pub async fn run(
    client: kube::Client,
    settings: LeaseSettings,
    leader: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let mut observed: Option<Observed> = None;
    let mut last_renewal: Option<Instant> = None;
    loop {
        let wait = match attempt(&api, &settings, &mut observed).await {
            Ok(Attempt::Held) => {
                last_renewal = Some(Instant::now());
                if !*leader.borrow() {
                    tracing::info!(lease = %settings.name, identity = %settings.identity, "became the leader");
                    leader.send_replace(true);
                }
                settings.renew_interval()
            }
            Ok(Attempt::Other) => {
                step_down(&leader, &settings, "another replica holds the lease");
                last_renewal = None;
                settings.retry_interval()
            }
            Err(error) => {
                tracing::warn!(lease = %settings.name, error = %super::describe(&error), "lease attempt failed");
                let overdue = last_renewal
                    .is_none_or(|renewed| renewed.elapsed() >= settings.renew_deadline());
                if overdue {
                    step_down(&leader, &settings, "the lease could not be renewed in time");
                }
                settings.retry_interval()
            }
        };
        tokio::select! {
            _ = shutdown.wait_for(|stopped| *stopped) => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    if *leader.borrow() {
        leader.send_replace(false);
        if let Err(error) = release(&api, &settings).await {
            tracing::warn!(error = %super::describe(&error), "could not release the lease; another replica takes over when it expires");
        } else {
            tracing::info!(lease = %settings.name, "lease released");
        }
    }
}

fn step_down(leader: &watch::Sender<bool>, settings: &LeaseSettings, why: &str) {
    if *leader.borrow() {
        tracing::warn!(lease = %settings.name, identity = %settings.identity, why, "no longer the leader");
        leader.send_replace(false);
    }
}

async fn attempt(
    api: &Api<Lease>,
    settings: &LeaseSettings,
    observed: &mut Option<Observed>,
) -> Result<Attempt, kube::Error> {
    let now = micro_now();
    let Some(mut lease) = api.get_opt(&settings.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(settings.name.clone()),
                namespace: Some(settings.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(settings.identity.clone()),
                lease_duration_seconds: Some(duration_seconds(settings.duration)),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Attempt::Held),
            Err(error) if super::is_conflict(&error) => Ok(Attempt::Other),
            Err(error) => Err(error),
        };
    };
    let version = lease.metadata.resource_version.clone().unwrap_or_default();
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let mine = holder == settings.identity;
    if !mine && !holder.is_empty() {
        // Held by another replica: it may be taken over only once the record has stayed
        // unchanged for the holder's whole lease duration, as seen from here.
        let since = match observed {
            Some(seen) if seen.resource_version == version => seen.since,
            _ => {
                *observed = Some(Observed {
                    resource_version: version.clone(),
                    since: Instant::now(),
                });
                return Ok(Attempt::Other);
            }
        };
        let holder_duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
            .unwrap_or(settings.duration);
        if since.elapsed() < holder_duration {
            return Ok(Attempt::Other);
        }
        tracing::info!(lease = %settings.name, previous = %holder, "the lease expired: taking it over");
    }
    if !mine {
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    spec.holder_identity = Some(settings.identity.clone());
    spec.lease_duration_seconds = Some(duration_seconds(settings.duration));
    spec.renew_time = Some(now);
    match api
        .replace(&settings.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => {
            *observed = None;
            Ok(Attempt::Held)
        }
        Err(error) if super::is_conflict(&error) => Ok(Attempt::Other),
        Err(error) => Err(error),
    }
}

/// Gives the Lease up (empty holder), so another replica can take over without waiting.
async fn release(api: &Api<Lease>, settings: &LeaseSettings) -> Result<(), kube::Error> {
    let mut lease = api.get(&settings.name).await?;
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = Some(micro_now());
    api.replace(&settings.name, &PostParams::default(), &lease)
        .await
        .map(|_| ())
}

fn micro_now() -> MicroTime {
    let now = std::time::SystemTime::now();
    MicroTime(
        k8s_openapi::jiff::Timestamp::try_from(now)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

fn duration_seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX)
}
