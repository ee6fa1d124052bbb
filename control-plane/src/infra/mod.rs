//! Infrastructure backends that run the Envoys of Gateways somewhere other
//! than this process's host: today one Envoy Deployment + Service per
//! Gateway in a Kubernetes cluster (`--infrastructure kubernetes`). The host
//! backend (Envoy child processes) lives in `crate::host`.

pub mod kubernetes;
