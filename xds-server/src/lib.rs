//! Gatewright's xDS server: the Aggregated Discovery Service over gRPC, in
//! its state-of-the-world and delta variants, answering from a versioned
//! cache keyed by node group (one group per Gateway). It knows nothing of
//! the Gateway API.
//!
//! - Per-resource versions come from content, so setting identical
//!   resources is a no-op and a change sends only what changed.
//! - Streams of one node group share the group's resources rather than
//!   copy them: a stream holds the view of each type it last sent plus only
//!   where it differs, subscription name sets are interned per group, a
//!   state-of-the-world resource list is encoded once and the same bytes
//!   go to every stream, and what follows from two views (their
//!   difference, the view a subscription selects, whether clusters are
//!   warm) is worked out once per group. A change then costs each stream
//!   what changed, not the size of the configuration. The streams' gRPC
//!   framing is our own for the same reason: tonic's codec keeps buffers
//!   as large as the largest message for a stream's whole life.
//! - Pushes follow make-before-break: clusters, endpoints and secrets go out
//!   before the listeners and routes that use them, which wait until the
//!   Envoy has the clusters warm (CDS answered, their endpoints sent and
//!   answered); clusters and secrets are removed only once no listener or
//!   route needs them.
//! - NACKs are recorded per group with Envoy's message ([`Cache::nacks`],
//!   [`Cache::nack_events`]) and a rejected version is not sent again.
//! - Which configuration each group's Envoys hold is tracked per stream
//!   ([`Cache::sync_of`], [`Cache::sync_changes`]): a stream holds a
//!   version ([`Resources::config_version`]) once its Envoy has
//!   acknowledged all of it, so "programmed" can mean "acknowledged", or
//!   has rejected it, with Envoy's message.
//! - Bounded ([`Limits`]): streams, names per subscription, and responses
//!   left unacknowledged (a client that is behind gets the latest state
//!   when it catches up; one that answers nothing for a while is cut off).
//!   Node groups nobody publishes or watches are forgotten.
//! - Optionally authenticated and authorised: [`serve_tls`] (or
//!   [`TlsIncoming`]) accepts only clients with a certificate the
//!   configuration's verifier accepts ([`mtls_server_config`]: signed by a
//!   given CA), and an [`Authorizer`] set with [`AdsServer::with_authorizer`]
//!   decides from that certificate's names which node group a client may
//!   subscribe as. Without one, any client may fetch any group (host mode,
//!   on loopback).

mod auth;
mod cache;
mod grpc;
mod server;
mod session;
mod share;
mod tls;

pub use auth::{Authorizer, IdentityError, PeerIdentity};
pub use cache::{Cache, GroupSync, Nack, Resource, Resources, Stats, TypeResources};
pub use server::{AdsServer, AdsService, GROUP_METADATA_KEY};
pub use session::{Limits, type_url};
pub use tls::{
    ConnectionInfo, ReloadableServerConfig, TlsConnection, TlsIncoming, TlsSetupError,
    mtls_server_config, serve_tls,
};
