//! `cargo run -p gatewright-api-gen`: regenerates `api/src/generated/` from
//! the checked-in Gateway API CRDs.

fn main() -> anyhow::Result<()> {
    let root = gatewright_api_gen::repository_root();
    for name in gatewright_api_gen::write(&root)? {
        println!(
            "{}",
            gatewright_api_gen::output_folder().join(name).display()
        );
    }
    Ok(())
}
