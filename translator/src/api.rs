//! The Gateway API types Gatewright reads and writes, in one place.
//!
//! They are the experimental channel's: a superset of the standard
//! channel's, so an object stored through either channel's CRDs decodes
//! without losing a field (experimental fields such as `defaultScope`,
//! `useDefaultGateways`, `retry`, `sessionPersistence` or the `ExternalAuth`
//! filter reach the translator, which implements or refuses each).
//! Every crate of the workspace imports Gateway API types from here, never
//! from `gateway_api` directly, so the two channels' distinct Rust types are
//! never mixed.

pub use gateway_api::Duration;
pub use gateway_api::experimental::{
    gatewayclasses, gateways, grpcroutes, httproutes, listenersets, referencegrants, tlsroutes,
};

/// BackendTLSPolicy. Its v1.5.1 schema is the same in both channels, and the
/// gateway-api crate generates the type only for the standard one.
pub use gateway_api::backendtlspolicies;
