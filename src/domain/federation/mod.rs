//! Trust between meshes (docs/meshes.md): which trust domains a mesh
//! accepts, the Istio configuration that says so ([`istio`]), and the SPIFFE bundle documents
//! meshroot serves and fetches ([`bundle`]).

pub mod bundle;
pub mod cross;
pub mod istio;
pub mod partner;
