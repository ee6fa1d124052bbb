//! The CRD bundle, embedded at build time so the binary validates the same
//! way wherever it runs. `tests/bundle.rs` checks that this list names
//! every CRD file of the folders.

macro_rules! crd {
    ($path:literal) => {
        (
            $path,
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/", $path)),
        )
    };
}

/// Each file's path (relative to the repository's `crds/`) and text.
pub(crate) const FILES: &[(&str, &str)] = &[
    crd!("gateway-api-v1.7.0/experimental/gateway.networking.k8s.io_backendtlspolicies.yaml"),
    crd!("gateway-api-v1.7.0/experimental/gateway.networking.k8s.io_gatewayclasses.yaml"),
    crd!("gateway-api-v1.7.0/experimental/gateway.networking.k8s.io_gateways.yaml"),
    crd!("gateway-api-v1.7.0/experimental/gateway.networking.k8s.io_grpcroutes.yaml"),
    crd!("gateway-api-v1.7.0/experimental/gateway.networking.k8s.io_httproutes.yaml"),
    crd!("gateway-api-v1.7.0/experimental/gateway.networking.k8s.io_listenersets.yaml"),
    crd!("gateway-api-v1.7.0/experimental/gateway.networking.k8s.io_referencegrants.yaml"),
    crd!("gateway-api-v1.7.0/experimental/gateway.networking.k8s.io_tcproutes.yaml"),
    crd!("gateway-api-v1.7.0/experimental/gateway.networking.k8s.io_tlsroutes.yaml"),
    crd!("gateway-api-v1.7.0/experimental/gateway.networking.k8s.io_udproutes.yaml"),
    crd!("gateway-api-v1.7.0/experimental/gateway.networking.x-k8s.io_xbackends.yaml"),
    crd!(
        "gateway-api-v1.7.0/experimental/gateway.networking.x-k8s.io_xbackendtrafficpolicies.yaml"
    ),
    crd!("gateway-api-v1.7.0/experimental/gateway.networking.x-k8s.io_xmeshes.yaml"),
    crd!("gateway-api-v1.7.0/experimental/gateway.networking.x-k8s.io_xtelemetrypolicies.yaml"),
    crd!("gatewright/gatewright.dev_proxyparameters.yaml"),
];

/// The API groups the bundle defines kinds of: an object of one of them is
/// refused when the bundle cannot be read, never let through unchecked.
pub(crate) const GROUPS: &[&str] = &[
    "gateway.networking.k8s.io",
    "gateway.networking.x-k8s.io",
    "gatewright.dev",
];

/// The names of the embedded files.
pub fn file_names() -> impl Iterator<Item = &'static str> {
    FILES.iter().map(|(name, _)| *name)
}
