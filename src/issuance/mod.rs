//! The issuance pipeline. A request passes these stages in order; each returns what the next
//! one and the record need, and the first failure ends the request:
//!
//! 1. **authenticate** the caller (`authn`): a token or a client certificate → a [`Caller`];
//! 2. **throttle** the caller (`ratelimit`);
//! 3. **parse** the CSR (`csr`) → a [`CertificateRequest`](crate::domain::csr::CertificateRequest), not yet judged;
//! 4. **select** the caller's mesh;
//! 5. **impersonate**, if a node proxy asks for a workload's identity (`authn::impersonation`);
//! 6. **throttle** the namespace;
//! 7. **decide** (`policy`) → a [`Grant`]: exactly what will be signed;
//! 8. **sign and check** (`signer`) → the leaf, verified before it leaves;
//! 9. **record** durably (`records`, then the [`RecordSink`]), then answer.
//!
//! Every request ends in exactly one durable record (issued or denied) before its answer, and in
//! one log line (request id, identity, outcome, latency). Details of a refusal go to the log and
//! the record, never to the client: every failure is classified once ([`IssueError::classify`])
//! and the edge maps that class to a gRPC status.

pub mod ca_key;
mod current;
mod error;
mod holds;
mod intermediate;
mod pipeline;
mod record_builder;
mod request;
pub mod revoke;
mod serving;

pub use self::current::CurrentAuthority;
pub use self::error::{Answer, Classification, IssueError, RevokedRefusal};
pub use self::holds::{Hold, Holds};
pub use self::intermediate::{ClusterCa, CLUSTER_INTERMEDIATE_SUBJECT};
pub use self::pipeline::{CertificateAuthority, Mesh};
pub use self::record_builder::{issued_record, IssuedFacts};
pub use self::request::{Issued, RequestId, SigningRequest};
