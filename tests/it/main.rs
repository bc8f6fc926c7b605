//! meshroot's integration tests, as one test binary: one module per feature, and the shared
//! helpers in `common`. One binary links once; seventeen binaries each linked the whole
//! dependency tree and `common` again, which dominated an incremental test build on 2 cores.
//!
//! Run one feature's tests with a filter: `cargo test --test it rejections::`.

mod common;

mod acceptance;
mod alerts;
mod ambient;
mod architecture;
mod audit;
mod bench;
mod bundle_endpoint;
mod ca_addr;
mod ca_material;
mod cli;
mod client_cert_auth;
mod cluster_duties;
mod connection_limits;
mod crash;
mod deploy;
mod disk_full;
mod docs;
mod envoy_mtls;
mod export;
mod federation;
mod hardening;
mod helm;
mod issuance;
mod istio_config;
mod kubernetes_auth;
mod meshes;
mod monitoring;
mod name_constraints;
mod pkcs11;
mod plugin;
mod rejections;
mod replicas;
mod revocation;
mod rotation;
mod rustls_mtls;
mod store_failure;
mod tls_policies;
mod ui;
