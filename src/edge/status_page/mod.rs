//! The status page (`/ui` on the admin port): `gather` collects it through the audit API
//! (the same access rule, the same answer across replicas), `render` draws it as HTML.

pub mod gather;
pub mod render;
