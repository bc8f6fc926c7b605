//! Issue 14, D13: the TLS policies istio-agent can be configured with (`COMPLIANCE_POLICY`)
//! connect to both of meshroot's listeners. `pqc` offers only the hybrid post-quantum key
//! exchange X25519MLKEM768 over TLS 1.3; the FIPS-shaped policies ask for TLS 1.2 with P-256 and
//! AES-GCM, or TLS 1.3 with P-256. Each client here is rustls restricted to exactly that.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use rustls::crypto::CryptoProvider;
use rustls::{NamedGroup, ProtocolVersion};

static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
static TLS12_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];

struct Policy {
    name: &'static str,
    provider: CryptoProvider,
    versions: &'static [&'static rustls::SupportedProtocolVersion],
    group: NamedGroup,
    version: ProtocolVersion,
}

fn policies() -> Vec<Policy> {
    use rustls::crypto::{aws_lc_rs, ring};
    let only = |mut provider: CryptoProvider,
                groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup>| {
        provider.kx_groups = groups;
        provider
    };
    let mut fips_tls12 = only(ring::default_provider(), vec![ring::kx_group::SECP256R1]);
    fips_tls12.cipher_suites = vec![
        ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ];
    vec![
        Policy {
            name: "pqc: X25519MLKEM768 only, TLS 1.3",
            provider: only(
                aws_lc_rs::default_provider(),
                vec![aws_lc_rs::kx_group::X25519MLKEM768],
            ),
            versions: TLS13_ONLY,
            group: NamedGroup::X25519MLKEM768,
            version: ProtocolVersion::TLSv1_3,
        },
        Policy {
            name: "fips-140-2: TLS 1.2, P-256, AES-GCM",
            provider: fips_tls12,
            versions: TLS12_ONLY,
            group: NamedGroup::secp256r1,
            version: ProtocolVersion::TLSv1_2,
        },
        Policy {
            name: "fips-140-3: TLS 1.3 only, P-256 key exchange",
            provider: only(ring::default_provider(), vec![ring::kx_group::SECP256R1]),
            versions: TLS13_ONLY,
            group: NamedGroup::secp256r1,
            version: ProtocolVersion::TLSv1_3,
        },
        Policy {
            // Go 1.24+ (istio-agent's default): key shares for the hybrid, then X25519. The
            // server follows the client's preference among the shares it sent.
            name: "default: X25519MLKEM768 and X25519",
            provider: only(
                aws_lc_rs::default_provider(),
                vec![
                    aws_lc_rs::kx_group::X25519MLKEM768,
                    aws_lc_rs::kx_group::X25519,
                ],
            ),
            versions: TLS13_ONLY,
            group: NamedGroup::X25519MLKEM768,
            version: ProtocolVersion::TLSv1_3,
        },
    ]
}

/// Handshakes with `address` under `policy`; returns the negotiated (group, version, ALPN).
async fn handshake(
    address: SocketAddr,
    root_pem: &str,
    policy: Policy,
) -> (Option<NamedGroup>, Option<ProtocolVersion>, Option<Vec<u8>>) {
    let mut roots = rustls::RootCertStore::empty();
    for root in certificates(root_pem) {
        roots.add(root).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(policy.provider))
        .with_protocol_versions(policy.versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap_or_else(|e| panic!("{}: {address}: {e}", policy.name));
    let connection = tls.get_ref().1;
    (
        connection
            .negotiated_key_exchange_group()
            .map(|group| group.name()),
        connection.protocol_version(),
        connection.alpn_protocol().map(<[u8]>::to_vec),
    )
}

#[tokio::test]
async fn every_istio_compliance_policy_connects_to_both_listeners() {
    let ca = TestCa::new();
    ca.admin_on_tls(&["spiffe://cluster.local/ns/ops/sa/auditor"]);
    let server = ca.start().await;
    let admin = SocketAddr::from(([127, 0, 0, 1], server.server.admin_address().port()));
    for listener in [server.server.local_address(), admin] {
        for policy in policies() {
            let (name, group, version) = (policy.name, policy.group, policy.version);
            let negotiated = handshake(listener, &ca.root_pem(), policy).await;
            assert_eq!(
                negotiated,
                (Some(group), Some(version), Some(b"h2".to_vec())),
                "{name} on {listener}"
            );
        }
    }
    // And a whole CSR exchange over the post-quantum key exchange: the channel meshroot's own
    // client opens offers it too, and istio-agent's pqc policy is exactly this.
    verify_chain(&server.issue(&ca, "pqc").await, &ca.root_pem());
    server.stop().await;
}
