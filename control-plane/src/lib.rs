//! The Gatewright control plane: the file provider, host infrastructure
//! (Envoy child processes), status, the admin server and the `run` loop.
//! The `gatewright` binary is a thin CLI over this library.

pub mod acks;
pub mod admin;
pub mod controller;
pub mod infra;
pub mod k8s;
pub mod metrics;
pub mod pipeline;
pub mod pki;
pub mod run;
pub mod source;
pub mod status;
pub mod xds;
