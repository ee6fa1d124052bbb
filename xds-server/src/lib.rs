//! Gatewright's xDS server: the Aggregated Discovery Service over gRPC, in
//! its state-of-the-world and delta variants, answering from a versioned
//! cache keyed by node group (one group per Gateway). It knows nothing of
//! the Gateway API.
//!
//! - Per-resource versions come from content, so setting identical
//!   resources is a no-op and a change sends only what changed.
//! - Pushes follow make-before-break: clusters, endpoints and secrets go out
//!   before the listeners and routes that use them, which wait until the
//!   Envoy has the clusters warm (CDS answered, their endpoints sent and
//!   answered); clusters and secrets are removed only once no listener or
//!   route needs them.
//! - NACKs are recorded per group with Envoy's message ([`Cache::nacks`],
//!   [`Cache::nack_events`]) and a rejected version is not sent again.

mod cache;
mod server;
mod session;

pub use cache::{Cache, Nack, Resource, Resources, Stats, TypeResources};
pub use server::{AdsServer, GROUP_METADATA_KEY};
pub use session::type_url;
