//! Gatewright's own CRD manifests are generated from their Rust types; this
//! fails if a checked-in manifest is stale. To regenerate:
//!
//! ```sh
//! GATEWRIGHT_WRITE_CRDS=1 cargo test -p gatewright --test crd
//! ```

use std::path::Path;

#[test]
fn proxyparameters_crd_is_up_to_date() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crds/gatewright/gatewright.dev_proxyparameters.yaml");
    let generated = gatewright::infra::kubernetes::params::crd_yaml().expect("generate the CRD");
    if std::env::var_os("GATEWRIGHT_WRITE_CRDS").is_some_and(|v| !v.is_empty()) {
        let dir = path.parent().expect("crds folder");
        std::fs::create_dir_all(dir).expect("create crds/gatewright");
        std::fs::write(&path, &generated).expect("write the CRD");
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; generate it with GATEWRIGHT_WRITE_CRDS=1 cargo test -p gatewright --test crd",
            path.display()
        )
    });
    assert!(
        on_disk == generated,
        "{} is stale: regenerate it with GATEWRIGHT_WRITE_CRDS=1 cargo test -p gatewright --test crd",
        path.display()
    );
}
