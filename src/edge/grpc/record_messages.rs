//! Records as the audit API carries them (`meshroot.audit.v1.Record`), to and from the domain
//! [`Record`]. The store's on-disk format (`adapters/store/encoding.rs`) maps the same domain
//! record to its own messages: the two formats share field numbers today and may part.

use crate::domain::clock::{from_unix_millis, from_unix_seconds, unix_millis};
use crate::domain::record::{
    CallerRecord, DenialRecord, IssuedCa, IssuedRecord, Outcome, Record, RefusalSummary,
    RevocationRecord, RevokedCertificate, RECORD_VERSION,
};
use crate::pb::audit as api;

/// A record as the audit API sends it.
pub fn record_message(record: &Record) -> api::Record {
    let caller = &record.caller;
    let outcome = match &record.outcome {
        Outcome::Issued(issued) => api::record::Outcome::Issued(api::Issuance {
            serial: issued.serial.clone(),
            spiffe_id: issued.spiffe_id.clone(),
            requested_spiffe_id: issued.requested_spiffe_id.clone(),
            mesh: issued.mesh.clone(),
            trust_domain: issued.trust_domain.clone(),
            namespace: issued.namespace.clone(),
            service_account: issued.service_account.clone(),
            not_before: crate::domain::clock::unix_seconds(issued.not_before),
            not_after: crate::domain::clock::unix_seconds(issued.not_after),
            key_algorithm: issued.key_algorithm.clone(),
            key_bits: issued.key_bits,
            public_key_sha256: issued.public_key_sha256.clone(),
            csr_sha256: issued.csr_sha256.clone(),
            intermediate_sha256: issued.intermediate_sha256.clone(),
            requested_ttl_seconds: issued.requested_ttl_seconds,
            certificate_sha256: issued.certificate_sha256.clone(),
            dns_names: issued.dns_names.clone(),
            ca: issued.ca.as_ref().map(|ca| api::IssuedCa {
                cluster: ca.cluster.clone(),
                root_sha256: ca.root_sha256.clone(),
                permitted_trust_domains: ca.permitted_trust_domains.clone(),
            }),
        }),
        Outcome::Denied(denied) => api::record::Outcome::Denied(api::Denial {
            reason: denied.reason.clone(),
            detail: denied.detail.clone(),
            mesh: denied.mesh.clone(),
            requested_spiffe_id: denied.requested_spiffe_id.clone(),
            csr_sha256: denied.csr_sha256.clone(),
            summary: denied.summary.as_ref().map(|summary| api::RefusalSummary {
                count: summary.count,
                first_at_ms: unix_millis(summary.first_at),
                last_at_ms: unix_millis(summary.last_at),
            }),
        }),
        Outcome::Revoked(revoked) => api::record::Outcome::Revoked(api::Revocation {
            reason: revoked.reason.clone(),
            comment: revoked.comment.clone(),
            selector: revoked.selector.clone(),
            certificates: revoked
                .certificates
                .iter()
                .map(revoked_certificate_message)
                .collect(),
            blocked: revoked.blocked.clone(),
            blocked_until_ms: revoked.blocked_until.map(unix_millis).unwrap_or(0),
            unblocked: revoked.unblocked.clone(),
        }),
        Outcome::Federated(federated) => api::record::Outcome::Federated(api::Federation {
            mesh: federated.mesh.clone(),
            trust_domain: federated.trust_domain.clone(),
            bundle_url: federated.bundle_url.clone(),
            sequence: federated.sequence,
            authorities_sha256: federated.authorities_sha256.clone(),
            added_sha256: federated.added_sha256.clone(),
            removed_sha256: federated.removed_sha256.clone(),
            cross_certified_sha256: federated.cross_certified_sha256.clone(),
            unprotected: federated.unprotected,
        }),
        Outcome::CaKey(ca_key) => api::record::Outcome::CaKey(api::CaKeyEvent {
            event: ca_key.event.clone(),
            role: ca_key.role.clone(),
            mesh: ca_key.mesh.clone(),
            certificate_sha256: ca_key.certificate_sha256.clone(),
            issuer_sha256: ca_key.issuer_sha256.clone(),
            subject: ca_key.subject.clone(),
            serial: ca_key.serial.clone(),
            not_before: ca_key.not_before,
            not_after: ca_key.not_after,
            key: Some(key_location_message(&ca_key.key)),
            signed_by: ca_key.signed_by.as_ref().map(key_location_message),
        }),
    };
    api::Record {
        version: RECORD_VERSION,
        sequence: record.sequence,
        recorded_at_ms: unix_millis(record.recorded_at),
        request_id: record.request_id.clone(),
        caller: Some(api::Caller {
            authenticator: caller.authenticator.clone(),
            issuer: caller.issuer.clone(),
            subject: caller.subject.clone(),
            cluster_id: caller.cluster_id.clone(),
            peer_address: caller.peer_address.clone(),
            spiffe_id: caller.spiffe_id.clone(),
            pod_name: caller.pod_name.clone(),
            pod_uid: caller.pod_uid.clone(),
        }),
        outcome: Some(outcome),
    }
}

/// A record the audit API received; None if it is incomplete or of a newer format.
pub(crate) fn record_from_message(record: api::Record) -> Option<Record> {
    if record.version == 0 || record.version > RECORD_VERSION {
        return None;
    }
    let caller = record.caller.unwrap_or_default();
    let outcome = match record.outcome? {
        api::record::Outcome::Issued(issued) => Outcome::Issued(IssuedRecord {
            serial: issued.serial,
            spiffe_id: issued.spiffe_id,
            requested_spiffe_id: issued.requested_spiffe_id,
            dns_names: issued.dns_names,
            mesh: issued.mesh,
            trust_domain: issued.trust_domain,
            namespace: issued.namespace,
            service_account: issued.service_account,
            not_before: from_unix_seconds(issued.not_before),
            not_after: from_unix_seconds(issued.not_after),
            key_algorithm: issued.key_algorithm,
            key_bits: issued.key_bits,
            public_key_sha256: issued.public_key_sha256,
            csr_sha256: issued.csr_sha256,
            intermediate_sha256: issued.intermediate_sha256,
            certificate_sha256: issued.certificate_sha256,
            requested_ttl_seconds: issued.requested_ttl_seconds,
            ca: issued.ca.map(|ca| IssuedCa {
                cluster: ca.cluster,
                root_sha256: ca.root_sha256,
                permitted_trust_domains: ca.permitted_trust_domains,
            }),
        }),
        api::record::Outcome::Denied(denied) => Outcome::Denied(DenialRecord {
            reason: denied.reason,
            detail: denied.detail,
            mesh: denied.mesh,
            requested_spiffe_id: denied.requested_spiffe_id,
            csr_sha256: denied.csr_sha256,
            summary: denied.summary.map(|summary| RefusalSummary {
                count: summary.count,
                first_at: from_unix_millis(summary.first_at_ms),
                last_at: from_unix_millis(summary.last_at_ms),
            }),
        }),
        api::record::Outcome::Revoked(revoked) => Outcome::Revoked(RevocationRecord {
            reason: revoked.reason,
            comment: revoked.comment,
            selector: revoked.selector,
            certificates: revoked
                .certificates
                .into_iter()
                .map(revoked_certificate_from_message)
                .collect(),
            blocked: revoked.blocked,
            blocked_until: (revoked.blocked_until_ms != 0)
                .then(|| from_unix_millis(revoked.blocked_until_ms)),
            unblocked: revoked.unblocked,
        }),
        api::record::Outcome::Federated(federated) => {
            Outcome::Federated(crate::domain::record::FederationRecord {
                mesh: federated.mesh,
                trust_domain: federated.trust_domain,
                bundle_url: federated.bundle_url,
                sequence: federated.sequence,
                authorities_sha256: federated.authorities_sha256,
                added_sha256: federated.added_sha256,
                removed_sha256: federated.removed_sha256,
                cross_certified_sha256: federated.cross_certified_sha256,
                unprotected: federated.unprotected,
            })
        }
        api::record::Outcome::CaKey(ca_key) => Outcome::CaKey(crate::domain::record::CaKeyRecord {
            event: ca_key.event,
            role: ca_key.role,
            mesh: ca_key.mesh,
            certificate_sha256: ca_key.certificate_sha256,
            issuer_sha256: ca_key.issuer_sha256,
            subject: ca_key.subject,
            serial: ca_key.serial,
            not_before: ca_key.not_before,
            not_after: ca_key.not_after,
            key: ca_key.key.map(key_location).unwrap_or_default(),
            signed_by: ca_key.signed_by.map(key_location),
        }),
    };
    Some(Record {
        sequence: record.sequence,
        recorded_at: from_unix_millis(record.recorded_at_ms),
        request_id: record.request_id,
        caller: CallerRecord {
            authenticator: caller.authenticator,
            issuer: caller.issuer,
            subject: caller.subject,
            cluster_id: caller.cluster_id,
            peer_address: caller.peer_address,
            spiffe_id: caller.spiffe_id,
            pod_name: caller.pod_name,
            pod_uid: caller.pod_uid,
        },
        outcome,
    })
}

/// A revoked certificate as the audit API carries it.
pub(crate) fn revoked_certificate_message(c: &RevokedCertificate) -> api::RevokedCertificate {
    api::RevokedCertificate {
        serial: c.serial.clone(),
        intermediate_sha256: c.intermediate_sha256.clone(),
        not_after: crate::domain::clock::unix_seconds(c.not_after),
        spiffe_id: c.spiffe_id.clone(),
        mesh: c.mesh.clone(),
        member: c.member.clone(),
    }
}

/// A revoked certificate from its message.
pub(crate) fn revoked_certificate_from_message(c: api::RevokedCertificate) -> RevokedCertificate {
    RevokedCertificate {
        serial: c.serial,
        intermediate_sha256: c.intermediate_sha256,
        not_after: from_unix_seconds(c.not_after),
        spiffe_id: c.spiffe_id,
        mesh: c.mesh,
        member: c.member,
    }
}

fn key_location_message(key: &crate::domain::record::KeyLocation) -> api::KeyLocation {
    api::KeyLocation {
        custody: key.custody.clone(),
        token_label: key.token_label.clone(),
        token_serial: key.token_serial.clone(),
        key_label: key.key_label.clone(),
        key_id: key.key_id.clone(),
        algorithm: key.algorithm.clone(),
        public_key_sha256: key.public_key_sha256.clone(),
    }
}

fn key_location(key: api::KeyLocation) -> crate::domain::record::KeyLocation {
    crate::domain::record::KeyLocation {
        custody: key.custody,
        token_label: key.token_label,
        token_serial: key.token_serial,
        key_label: key.key_label,
        key_id: key.key_id,
        algorithm: key.algorithm,
        public_key_sha256: key.public_key_sha256,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn a_record_survives_the_api_and_reads_like_the_stores_encoding() {
        use prost::Message as _;
        let at = UNIX_EPOCH + Duration::from_millis(1_800_000_000_123);
        let record = Record {
            sequence: 7,
            ..Record::new(
                "r1".into(),
                at,
                CallerRecord {
                    subject: "system:serviceaccount:shop:cart".into(),
                    ..CallerRecord::default()
                },
                Outcome::Revoked(RevocationRecord {
                    reason: "key-compromise".into(),
                    certificates: vec![RevokedCertificate {
                        serial: vec![1, 2],
                        intermediate_sha256: vec![3; 32],
                        not_after: UNIX_EPOCH + Duration::from_secs(1_800_086_400),
                        spiffe_id: "spiffe://a/ns/shop/sa/cart".into(),
                        mesh: "a".into(),
                        member: String::new(),
                    }],
                    blocked: vec!["spiffe://a/ns/shop/sa/cart".into()],
                    ..RevocationRecord::default()
                }),
            )
        };
        let message = record_message(&record);
        assert_eq!(record_from_message(message.clone()), Some(record.clone()));
        // Wire-compatible with the store's message, which earlier clients read here.
        let stored = crate::pb::store::Record::decode(message.encode_to_vec().as_slice()).unwrap();
        assert_eq!(crate::adapters::store::from_message(stored), Some(record));
        assert_eq!(record_from_message(api::Record::default()), None);
    }
}
