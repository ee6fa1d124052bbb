//! Compiles the RE2 shim (src/re2/shim.cc) and links the system RE2
//! library statically, so binaries need no RE2 at run time. RE2 itself comes
//! from the system (Debian: `libre2-dev`; .ci/run installs it).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=src/re2/shim.cc");
    println!("cargo:rerun-if-env-changed=RE2_LIB_DIR");

    let lib_dir = re2_lib_dir();
    if !lib_dir.join("libre2.a").is_file() {
        panic!(
            "no libre2.a in {} (install RE2's development files, e.g. Debian's libre2-dev, \
             or set RE2_LIB_DIR)",
            lib_dir.display()
        );
    }

    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("src/re2/shim.cc")
        .warnings(true)
        .compile("gatewright_re2_shim");

    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    // After the shim (cc links it first), which needs it; cc also links
    // the C++ standard library.
    println!("cargo:rustc-link-lib=static=re2");
}

/// Where libre2.a is: `RE2_LIB_DIR`, else what pkg-config says, else the
/// usual Debian multiarch directory.
fn re2_lib_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RE2_LIB_DIR") {
        return PathBuf::from(dir);
    }
    let from_pkg_config = Command::new("pkg-config")
        .args(["--variable=libdir", "re2"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    match from_pkg_config {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from("/usr/lib/x86_64-linux-gnu"),
    }
}
