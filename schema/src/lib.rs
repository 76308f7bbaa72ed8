//! The Meshploy manifest format: types, loading, validation and the JSON Schema.
//!
//! This crate is pure: it does no IO, no async and reads no clock. Callers hand it file
//! contents and get back either a normalised [`DesiredState`] or every [`Diagnostic`] found,
//! each naming the file, line and column.

pub mod diagnostic;
pub mod envelope;
pub mod json_schema;
pub mod load;
mod manifest;
pub mod model;
pub mod rules;
mod spanned;
mod unknown;

pub use diagnostic::{Code, Diagnostic};
pub use envelope::Envelope;
pub use load::{Limits, ManifestFile, load};
pub use manifest::API_VERSION;
pub use model::{Address, DesiredState, Kind, Resource, Spec};
pub use spanned::Loc;
