//! Kubernetes mode's pieces that talk to the API server: the provider
//! (watches and stores), the status writer, leader election and the
//! reports of objects that cannot be decoded.

pub mod acks;
pub mod leader;
pub mod provider;
pub mod status;
pub mod undecodable;
