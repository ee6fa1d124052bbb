//! The Gateway API types Gatewright reads and writes, in one place.
//!
//! They are `gatewright-api`'s, generated from the Gateway API v1.7.0 CRDs
//! of the experimental channel: a superset of the standard channel's, so an
//! object stored through either channel's CRDs (of v1.7.0 or of an earlier
//! release whose schema it extends) decodes without losing a field.
//! Experimental fields such as `defaultScope`, `useDefaultGateways`,
//! listener `filters` or the `ExternalAuth` filter reach the translator,
//! which implements or refuses each. Every crate of the workspace imports
//! Gateway API types from here, never from `gatewright_api` directly.

pub use gateway_api::Duration;
pub use gatewright_api::{
    backendtlspolicies, gatewayclasses, gateways, grpcroutes, httproutes, listenersets,
    referencegrants, tcproutes, tlsroutes, udproutes,
};
