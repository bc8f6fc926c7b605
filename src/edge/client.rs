//! An istio-agent-like client: builds CSRs shaped exactly like istio-agent's and ztunnel's, and
//! calls `CreateCertificate` over TLS with the same metadata. Used by `meshroot request`, the
//! tests and the benchmarks.

use std::time::Duration;

use rcgen::{CertificateParams, CustomExtension, DistinguishedName, DnType, DnValue, KeyPair};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::domain::keys::der_tlv;
use crate::pb::istio::istio_certificate_service_client::IstioCertificateServiceClient;
use crate::pb::istio::{IstioCertificateRequest, IstioCertificateResponse};

/// OID 2.5.29.17, subjectAltName.
const SUBJECT_ALT_NAME: &[u64] = &[2, 5, 29, 17];

/// The subject of a CSR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsrSubject {
    /// istio-agent: one empty Organization (`O=`).
    EmptyOrganization,
    /// ztunnel: no attributes.
    Empty,
    /// Anything with a common name (not sent by real clients).
    CommonName(String),
}

/// One SubjectAltName entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum San {
    Uri(String),
    Dns(String),
}

/// The shape of a CSR.
#[derive(Debug, Clone)]
pub struct CsrShape {
    pub subject: CsrSubject,
    pub sans: Vec<San>,
    pub san_critical: bool,
    /// Extra extensions (OID, DER value, critical).
    pub extra_extensions: Vec<(Vec<u64>, Vec<u8>, bool)>,
}

impl CsrShape {
    /// What istio-agent sends: `O=`, one critical URI SAN.
    pub fn istio_agent(spiffe_id: &str) -> Self {
        Self {
            subject: CsrSubject::EmptyOrganization,
            sans: vec![San::Uri(spiffe_id.to_owned())],
            san_critical: true,
            extra_extensions: Vec::new(),
        }
    }

    /// What ztunnel sends: empty subject, one URI SAN (not critical in older versions).
    pub fn ztunnel(spiffe_id: &str) -> Self {
        Self {
            subject: CsrSubject::Empty,
            sans: vec![San::Uri(spiffe_id.to_owned())],
            san_critical: false,
            extra_extensions: Vec::new(),
        }
    }
}

/// Builds and signs a PEM CSR of the given shape with `key`.
pub fn build_csr(key: &KeyPair, shape: &CsrShape) -> Result<String, rcgen::Error> {
    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    match &shape.subject {
        CsrSubject::EmptyOrganization => subject.push(
            DnType::OrganizationName,
            DnValue::PrintableString("".try_into()?),
        ),
        CsrSubject::Empty => {}
        CsrSubject::CommonName(name) => subject.push(DnType::CommonName, name.as_str()),
    }
    params.distinguished_name = subject;
    if !shape.sans.is_empty() {
        // GeneralNames ::= SEQUENCE OF GeneralName; uniformResourceIdentifier [6], dNSName [2].
        let names: Vec<u8> = shape
            .sans
            .iter()
            .flat_map(|san| match san {
                San::Uri(uri) => der_tlv(0x86, uri.as_bytes()),
                San::Dns(name) => der_tlv(0x82, name.as_bytes()),
            })
            .collect();
        let mut san = CustomExtension::from_oid_content(SUBJECT_ALT_NAME, der_tlv(0x30, &names));
        san.set_criticality(shape.san_critical);
        params.custom_extensions.push(san);
    }
    for (oid, value, critical) in &shape.extra_extensions {
        let mut extension = CustomExtension::from_oid_content(oid, value.clone());
        extension.set_criticality(*critical);
        params.custom_extensions.push(extension);
    }
    params.serialize_request(key)?.pem()
}

/// How to reach meshroot.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` to connect to.
    pub address: String,
    /// PEM roots that the serving certificate must chain to (the mesh `root-cert.pem`).
    pub root_pem: String,
    /// The DNS name to check in the serving certificate (host part of `CA_ADDR`).
    pub server_name: String,
    /// Optional client certificate (PEM chain) and key (PEM) for mTLS.
    pub client_identity: Option<(String, String)>,
}

/// Connects over TLS with ALPN h2, verifying the server like istio-agent does.
pub async fn connect(target: &Target) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&target.root_pem))
        .domain_name(target.server_name.clone());
    if let Some((chain, key)) = &target.client_identity {
        tls = tls.identity(Identity::from_pem(chain, key));
    }
    Endpoint::from_shared(format!("https://{}", target.address))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
}

/// The metadata istio-agent sends.
#[derive(Debug, Clone, Default)]
pub struct AgentMetadata {
    /// Sent as `authorization: Bearer <token>` when present.
    pub token: Option<String>,
    /// Sent as `clusterid` (istio-agent's default is `Kubernetes`).
    pub cluster_id: String,
}

/// Sends one `CreateCertificate` call shaped like istio-agent's.
pub async fn create_certificate(
    channel: Channel,
    csr_pem: String,
    validity_seconds: i64,
    metadata: &AgentMetadata,
) -> Result<IstioCertificateResponse, tonic::Status> {
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr: csr_pem,
        validity_duration: validity_seconds,
        metadata: Some(prost_types::Struct {
            fields: [(
                "CertSigner".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(String::new())),
                },
            )]
            .into_iter()
            .collect(),
        }),
    });
    if let Some(token) = &metadata.token {
        let value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
            tonic::Status::invalid_argument("the token is not a valid header value")
        })?;
        request.metadata_mut().insert("authorization", value);
    }
    let cluster = MetadataValue::try_from(metadata.cluster_id.as_str()).map_err(|_| {
        tonic::Status::invalid_argument("the cluster id is not a valid header value")
    })?;
    request.metadata_mut().insert("clusterid", cluster);
    IstioCertificateServiceClient::new(channel)
        .create_certificate(request)
        .await
        .map(tonic::Response::into_inner)
}
