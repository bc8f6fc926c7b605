//! meshroot: a certificate authority for Istio meshes.
//!
//! The request path (see `../shared/docs/architecture.md`):
//! `grpc` (edge) → `authn` → `csr` → `policy` → `authority` (sign + check) → `record`/`store`.
//! The core (`identity`, `csr`, `policy`, `authority`, `record`, `ca`) knows neither gRPC nor sled.

#![forbid(unsafe_code)]

pub mod authn;
pub mod authority;
pub mod ca;
pub mod ca_files;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod csr;
pub mod grpc;
pub mod identity;
pub mod keys;
pub mod kubernetes;
pub mod policy;
pub mod record;
pub mod server;
pub mod store;

/// Generated protobuf code.
pub mod pb {
    /// Istio's CSR API (`istio.v1.auth`).
    pub mod istio {
        tonic::include_proto!("istio.v1.auth");
    }
    /// meshroot's on-disk record format (`meshroot.store.v1`).
    pub mod store {
        tonic::include_proto!("meshroot.store.v1");
    }
}
