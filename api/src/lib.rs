//! Rust types of the Gateway API v1.7.0 CRDs, experimental channel.
//!
//! `generated/` is written by `gatewright-api-gen` (kopium's library, the
//! generator the `gateway-api` crate uses) from `crds/gateway-api-v1.7.0/`;
//! never edit it by hand: `make api` regenerates it, and a test of
//! `gatewright-api-gen` fails when it is stale.

#[allow(
    clippy::all,
    clippy::pedantic,
    rustdoc::all,
    missing_docs,
    reason = "generated from the CRDs' OpenAPI schemas"
)]
mod generated;

pub use generated::*;
