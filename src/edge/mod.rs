//! The edge: where requests and commands come in and the process is run. gRPC (`grpc`), the
//! server's lifecycle, listeners and background loops (`server`), the status page
//! (`status_page`), shipping the log (`export`), the other replicas (`replicas`), the CLI
//! (`cli`), the istio-agent-like client (`client`) and the SPIFFE bundle client
//! (`bundle_client`). The only layer that may import any other.

pub(crate) mod bundle_client;
pub mod cli;
pub mod client;
pub mod export;
pub mod grpc;
pub(crate) mod replicas;
pub mod server;
pub(crate) mod shutdown;
pub(crate) mod status_page;
