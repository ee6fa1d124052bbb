//! The checked-in types are what the checked-in CRDs generate.

use gatewright_api_gen::{generate, output_folder, repository_root};
use std::collections::BTreeSet;

#[test]
fn the_generated_types_are_current() -> anyhow::Result<()> {
    let root = repository_root();
    let files = generate(&root)?;
    let folder = root.join(output_folder());
    let mut stale = Vec::new();
    for (name, text) in &files {
        let path = folder.join(name);
        match std::fs::read_to_string(&path) {
            Ok(current) if current == *text => {}
            Ok(_) => stale.push(format!("{name} differs")),
            Err(e) => stale.push(format!("{name}: {e}")),
        }
    }
    let present: BTreeSet<String> = std::fs::read_dir(&folder)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    for name in present {
        if !files.contains_key(&name) {
            stale.push(format!("{name} is no longer generated"));
        }
    }
    assert!(
        stale.is_empty(),
        "api/src/generated is stale ({}); regenerate with `make api`",
        stale.join(", ")
    );
    Ok(())
}
