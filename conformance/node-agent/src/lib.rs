//! Library part of the node agent: what both the agent and its exec helper
//! (`gatewright-pod-exec`) need, and pure helpers for pod files.

pub mod mountns;
pub mod podfiles;
