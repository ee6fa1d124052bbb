//! Kubernetes mode's pieces that talk to the API server: the provider
//! (watches and stores), the status writer and leader election.

pub mod leader;
pub mod provider;
pub mod status;
