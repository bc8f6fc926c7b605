//! The adapters behind the domain's ports: the authenticators (`authn`, which may ask a
//! Kubernetes API server), the record store (`store`, sled on disk), the Kubernetes API
//! (`kubernetes`: leases, ConfigMaps, Secrets, TokenReview) and the configuration file
//! (`config`). They import the domain, not each other (`kubernetes` implements `authn`'s
//! cluster API), and never the edge.

pub mod authn;
pub mod config;
pub(crate) mod kubernetes;
pub mod pkcs11;
pub mod store;
