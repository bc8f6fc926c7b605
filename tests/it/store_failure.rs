//! The record store fails under the pipeline (a `RecordSink` that refuses every append): the
//! answer is INTERNAL with the request id and none of the store's own text, and no
//! certificate leaves, for an issuance and for a refusal alike. The request's log line says it
//! failed, never that it was issued or denied.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tracing::instrument::WithSubscriber as _;

use crate::common::{self, agent_csr, spiffe_id, TestCa, MESH};
use meshroot::adapters::authn::impersonation::NodeAuthorizer;
use meshroot::adapters::authn::jwt::{self, JwtAuthenticator, TrustedIssuer};
use meshroot::adapters::authn::{AuthRequest, Authenticator, AuthenticatorChain, Authorization};
use meshroot::adapters::store::StoreError;
use meshroot::domain::clock::{Clock, SystemClock};
use meshroot::domain::identity::TrustDomain;
use meshroot::domain::policy::{AliasIssuance, MeshPolicy};
use meshroot::domain::record::{AppendFuture, Record, RecordSink};
use meshroot::issuance::{CertificateAuthority, IssueError, Mesh, SigningRequest};

/// Log output, captured for one request.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A store whose disk is gone: every append fails, and says why in its own words.
struct FailingSink;

impl RecordSink for FailingSink {
    fn append(&self, _record: Record) -> AppendFuture<'_> {
        Box::pin(async {
            Err(StoreError::Flush(Arc::new(std::io::Error::other(
                "sled: No space left on device (secret-internal-detail)",
            )))
            .into())
        })
    }
}

fn authority_over(ca: &TestCa, sink: Arc<dyn RecordSink>) -> CertificateAuthority {
    let trust_domain = TrustDomain::new("cluster.local").unwrap();
    let authority = Arc::new(
        meshroot::domain::signer::files::load_signer(
            MESH,
            trust_domain.clone(),
            &ca.path().join(MESH),
            &[],
            None,
            SystemTime::now(),
        )
        .unwrap(),
    );
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let keys = jwt::load_jwks(&ca.path().join(MESH).join("dev-issuer-jwks.json")).unwrap();
    let authenticators: Vec<Box<dyn Authenticator>> = vec![Box::new(JwtAuthenticator::new(
        vec![TrustedIssuer {
            issuer: meshroot::edge::cli::init::dev_issuer_name(MESH),
            mesh: MESH.into(),
            trust_domain: trust_domain.clone(),
            audiences: vec!["istio-ca".into()],
            keys,
        }],
        clock.clone(),
    ))];
    let policy = MeshPolicy {
        mesh: MESH.into(),
        trust_domain: trust_domain.clone(),
        trust_domain_aliases: vec![],
        alias_issuance: AliasIssuance::AsRequested,
        default_ttl: Duration::from_secs(86_400),
        max_ttl: Duration::from_secs(7 * 86_400),
        signer_not_after: authority.signing_not_after(),
        reserved: Vec::new(),
    };
    CertificateAuthority::new(
        vec![Mesh {
            signer: authority,
            policy,
            node_accounts: vec![],
            trust_domains: vec![trust_domain],
            clusters: vec![],
            accepts: vec![],
        }],
        AuthenticatorChain::new(authenticators),
        NodeAuthorizer::new(HashMap::new(), Duration::from_secs(5), clock.clone()),
        sink,
        clock,
    )
}

#[tokio::test]
async fn a_store_that_cannot_write_gets_internal_and_no_certificate_leaves() {
    common::init_test_log();
    let ca = TestCa::new();
    let authority = authority_over(&ca, Arc::new(FailingSink));
    let cart = spiffe_id("shop", "cart");
    for (token, what) in [
        (Some(ca.token(MESH, "shop", "cart")), "an issuance"),
        (None, "a refusal (no token)"),
    ] {
        let auth = AuthRequest {
            authorization: Authorization::from_header(
                token.map(|t| format!("Bearer {t}")).as_deref(),
            ),
            cluster_id: "Kubernetes".into(),
            peer_address: None,
            peer_certificates: vec![],
        };
        let request = SigningRequest {
            csr_pem: agent_csr(&cart),
            validity_seconds: 3600,
            impersonated_identity: None,
        };
        let request_id = authority.new_request_id();
        let log = Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        let result = authority
            .create_certificate(&request_id, &auth, &request)
            .with_subscriber(subscriber)
            .await;
        let log = log.text();
        assert!(
            log.lines()
                .any(|line| line.contains("certificate request failed")
                    && line.contains(&request_id.to_string())),
            "{what}: no failure line for the request: {log}"
        );
        assert!(
            !log.contains("certificate issued") && !log.contains("certificate request denied"),
            "{what}: logged as issued or denied: {log}"
        );
        let error = match result {
            Ok(_) => panic!("{what}: a certificate left without its record"),
            Err(error) => error,
        };
        assert!(matches!(error, IssueError::Store(_)), "{what}: {error:?}");
        let status = meshroot::edge::grpc::status_for(&error, &request_id);
        assert_eq!(status.code(), tonic::Code::Internal, "{what}");
        assert!(status.message().contains(&request_id.to_string()), "{what}");
        assert!(
            !status.message().contains("secret-internal-detail")
                && !status.message().contains("sled"),
            "{what}: the store's own text leaked: {}",
            status.message()
        );
    }
}
