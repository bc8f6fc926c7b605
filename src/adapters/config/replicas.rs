//! `[replicas]` (formerly `[cluster]`): the replicas that together are one CA. Every replica knows every member, ready
//! or not, by its admin address; the members are listed, or derived from a StatefulSet.

use std::time::Duration;

use super::model::{ReplicasConfig, StatefulSetMembers};
use super::raw::RawReplicas;
use super::values::duration_setting;
use super::values::Problems;
use crate::domain::identity::{SpiffeId, TrustDomain};

/// How long a member has to answer a cluster question before it counts as missing.
pub const DEFAULT_MEMBER_TIMEOUT: Duration = Duration::from_secs(5);
/// The namespace of a StatefulSet-derived membership without `namespace` or `$POD_NAMESPACE`.
const DEFAULT_NAMESPACE: &str = "istio-system";

/// The most replicas a cluster may have (each cluster decision asks every member; the
/// checkpoints ConfigMap is read up to this ordinal).
pub(crate) const MAX_REPLICAS: u32 = 256;

/// Parses `[replicas]` (or its old name `section` = `cluster`). `admin_port` is the default port of StatefulSet members;
/// `trust_domain` (the primary mesh's) names meshroot's own identity by default.
pub(super) fn replicas_section(
    section: &str,
    raw: RawReplicas,
    admin_port: u16,
    trust_domain: Option<&TrustDomain>,
    pod_namespace: Option<String>,
    p: &mut Problems,
) -> ReplicasConfig {
    let namespace = raw
        .namespace
        .clone()
        .or(pod_namespace)
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    let mut derived = None;
    let members = match (&raw.members, &raw.statefulset) {
        (Some(_), Some(_)) => {
            p.add(
                format!("{section}.members"),
                "give either members or statefulset, not both".into(),
            );
            Vec::new()
        }
        (Some(members), None) => {
            if members.is_empty() {
                p.add(
                    format!("{section}.members"),
                    "is empty: list every member's admin address, this one's included".into(),
                );
            }
            if members.len() > MAX_REPLICAS as usize {
                p.add(
                    format!("{section}.members"),
                    format!("{} members: at most {MAX_REPLICAS}", members.len()),
                );
                return empty(raw);
            }
            members.clone()
        }
        (None, Some(statefulset)) => {
            let Some(service) = &raw.service else {
                p.add(
                    format!("{section}.service"),
                    "the headless Service of the StatefulSet is required with statefulset".into(),
                );
                return empty(raw);
            };
            let replicas = raw.replicas.unwrap_or(0);
            if replicas == 0 {
                p.add(
                    format!("{section}.replicas"),
                    "the StatefulSet's replica count (at least 1) is required with statefulset"
                        .into(),
                );
            } else if replicas > MAX_REPLICAS {
                p.add(
                    format!("{section}.replicas"),
                    format!(
                        "{replicas} is more than {MAX_REPLICAS}: every decision asks every member"
                    ),
                );
            }
            let port = raw.port.unwrap_or(admin_port);
            let set = StatefulSetMembers {
                name: statefulset.clone(),
                service: service.clone(),
                namespace: namespace.clone(),
                port,
                // Only a count in range is expanded (100000 names, each checked against
                // the others, took 38 s before the refusal).
                replicas: replicas.min(MAX_REPLICAS),
            };
            let members = set.members(replicas.min(MAX_REPLICAS));
            derived = Some(set);
            members
        }
        (None, None) => {
            p.add(
                format!("{section}.members"),
                "list the members' admin addresses, or name the statefulset".into(),
            );
            Vec::new()
        }
    };
    if raw.members.is_some() && (raw.service.is_some() || raw.replicas.is_some()) {
        p.add(
            format!("{section}.members"),
            "service and replicas are for statefulset; members lists every address".into(),
        );
    }
    for (index, member) in members.iter().enumerate() {
        if !is_host_port(member) {
            p.add(
                format!("{section}.members[{index}]"),
                format!("{member:?} is not HOST:PORT"),
            );
        }
        if members[..index].contains(member) {
            p.add(
                format!("{section}.members[{index}]"),
                format!("{member:?} is listed twice"),
            );
        }
    }
    if let Some(this) = &raw.this_member {
        if !members.contains(this) {
            p.add(
                format!("{section}.self"),
                format!("{this:?} is not one of the members"),
            );
        }
    }
    let identity = match &raw.identity {
        Some(text) => match SpiffeId::parse(text) {
            Ok(_) => text.clone(),
            Err(_) => {
                p.add(
                    format!("{section}.identity"),
                    format!("{text:?} is not a spiffe://<td>/ns/<ns>/sa/<sa> identity"),
                );
                String::new()
            }
        },
        None => trust_domain
            .map(|td| format!("spiffe://{td}/ns/{namespace}/sa/meshroot"))
            .unwrap_or_default(),
    };
    ReplicasConfig {
        members,
        this_member: raw.this_member,
        identity,
        member_timeout: duration_setting(
            raw.member_timeout.as_deref(),
            DEFAULT_MEMBER_TIMEOUT,
            &format!("{section}.member_timeout"),
            p,
        ),
        statefulset: derived,
    }
}

fn empty(raw: RawReplicas) -> ReplicasConfig {
    ReplicasConfig {
        members: Vec::new(),
        this_member: raw.this_member,
        identity: String::new(),
        member_timeout: DEFAULT_MEMBER_TIMEOUT,
        statefulset: None,
    }
}

impl StatefulSetMembers {
    /// The members when the StatefulSet runs `replicas` (never fewer than configured: a
    /// replica scaled away stays a member until an operator lowers `replicas`).
    pub fn members(&self, replicas: u32) -> Vec<String> {
        statefulset_members(
            &self.name,
            &self.service,
            &self.namespace,
            self.port,
            replicas.max(self.replicas),
        )
    }
}

/// A StatefulSet's pods by their stable names under its headless Service:
/// `NAME-<ordinal>.SERVICE.NAMESPACE.svc:PORT`, ordinals 0 to `replicas - 1`.
pub fn statefulset_members(
    statefulset: &str,
    service: &str,
    namespace: &str,
    port: u16,
    replicas: u32,
) -> Vec<String> {
    (0..replicas)
        .map(|ordinal| format!("{statefulset}-{ordinal}.{service}.{namespace}.svc:{port}"))
        .collect()
}

/// `HOST:PORT` (a name, an IPv4 address or a bracketed IPv6 address, and a port).
fn is_host_port(text: &str) -> bool {
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    let host_ok = match host.strip_prefix('[') {
        Some(v6) => v6
            .strip_suffix(']')
            .is_some_and(|v6| v6.parse::<std::net::Ipv6Addr>().is_ok()),
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        }
    };
    host_ok && port.parse::<u16>().is_ok_and(|port| port != 0)
}

impl ReplicasConfig {
    /// This replica's member entry: `replicas.self` (or `$MESHROOT_MEMBER`), else the member
    /// whose first DNS label is this pod's name (`$POD_NAME`, a StatefulSet pod), else the
    /// member whose address is the admin listener's, else a member on a loopback or
    /// `localhost` host with the admin listener's port.
    pub(crate) fn resolve_self(
        &self,
        pod_name: Option<&str>,
        admin: std::net::SocketAddr,
    ) -> Option<String> {
        if let Some(this) = &self.this_member {
            return Some(this.clone());
        }
        let host = |member: &str| member.rsplit_once(':').map(|(host, _)| host.to_owned());
        if let Some(pod) = pod_name.filter(|pod| !pod.is_empty()) {
            if let Some(member) = self
                .members
                .iter()
                .find(|m| host(m).is_some_and(|h| h.split('.').next() == Some(pod)))
            {
                return Some(member.clone());
            }
        }
        if let Some(member) = self.members.iter().find(|m| **m == admin.to_string()) {
            return Some(member.clone());
        }
        self.members
            .iter()
            .find(|member| {
                let Some((host, port)) = member.rsplit_once(':') else {
                    return false;
                };
                let local = host == "localhost"
                    || host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                local && port.parse::<u16>().ok() == Some(admin.port())
            })
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_host_and_port() {
        assert!(is_host_port(
            "meshroot-0.meshroot-headless.istio-system.svc:15014"
        ));
        assert!(is_host_port("127.0.0.1:1"));
        assert!(is_host_port("[::1]:15014"));
        assert!(!is_host_port("meshroot-0"));
        assert!(!is_host_port("host:0"));
        assert!(!is_host_port(":15014"));
        assert!(!is_host_port("a b:15014"));
        assert!(!is_host_port("[nope]:15014"));
    }

    #[test]
    fn statefulset_members_are_every_ordinal() {
        assert_eq!(
            statefulset_members("meshroot", "meshroot-headless", "istio-system", 15014, 3),
            [
                "meshroot-0.meshroot-headless.istio-system.svc:15014",
                "meshroot-1.meshroot-headless.istio-system.svc:15014",
                "meshroot-2.meshroot-headless.istio-system.svc:15014",
            ]
        );
    }

    #[test]
    fn self_is_found_by_pod_name_address_or_local_port() {
        let config = ReplicasConfig {
            members: statefulset_members("meshroot", "h", "ns", 15014, 2),
            this_member: None,
            identity: String::new(),
            member_timeout: DEFAULT_MEMBER_TIMEOUT,
            statefulset: None,
        };
        let admin: std::net::SocketAddr = "0.0.0.0:15014".parse().unwrap();
        assert_eq!(
            config.resolve_self(Some("meshroot-1"), admin).as_deref(),
            Some("meshroot-1.h.ns.svc:15014")
        );
        assert_eq!(config.resolve_self(Some("other-0"), admin), None);
        let local = ReplicasConfig {
            members: vec!["localhost:7001".into(), "localhost:7002".into()],
            ..config
        };
        let admin: std::net::SocketAddr = "0.0.0.0:7002".parse().unwrap();
        assert_eq!(
            local.resolve_self(None, admin).as_deref(),
            Some("localhost:7002")
        );
    }
}
