//! The domain: who is asking, what a CSR says, what the policy grants, what the signer signs,
//! what is recorded, the audit model and the trust between meshes. Synchronous and free of
//! tokio, tonic, sled and kube; it reads CA files and nothing else.

pub mod audit;
pub(crate) mod caller;
pub mod capacity;
pub mod clock;
pub mod csr;
pub mod digest;
pub mod federation;
pub mod identity;
pub mod keys;
pub(crate) mod metrics;
pub mod policy;
pub(crate) mod ratelimit;
pub mod record;
pub mod revocation;
pub mod signer;
pub mod signing_key;
