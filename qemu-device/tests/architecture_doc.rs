//! docs/architecture.md names files and folders of the tree; it must move with the tree: every
//! path it names exists, and every folder of qemu-device/src is described.

use std::path::Path;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the repository")
}

fn doc() -> String {
    std::fs::read_to_string(repo().join("docs/architecture.md")).expect("docs/architecture.md")
}

/// The `code spans` of the page that are paths in the repository (they name a top-level folder).
fn paths(doc: &str) -> Vec<String> {
    let tops = ["abi/", "iommu-model/", "rmp-model/", "qemu-device/", "guest-tests/", "fuzz-harness/", "fuzz/", "scripts/", "docs/"];
    doc.split('`').skip(1).step_by(2).filter(|s| tops.iter().any(|t| s.starts_with(t))).map(str::to_string).collect()
}

#[test]
fn every_path_it_names_exists() {
    let named = paths(&doc());
    assert!(named.len() > 30, "docs/architecture.md names only {} paths", named.len());
    let missing: Vec<&String> = named.iter().filter(|p| !repo().join(p.as_str()).exists()).collect();
    assert!(missing.is_empty(), "docs/architecture.md names paths that are not in the tree: {missing:?}");
}

#[test]
fn every_folder_of_the_daemon_is_described() {
    let doc = doc();
    let src = repo().join("qemu-device/src");
    for entry in std::fs::read_dir(&src).expect("qemu-device/src") {
        let entry = entry.expect("an entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let named = if entry.path().is_dir() { format!("`qemu-device/src/{name}/`") } else { format!("qemu-device/src/{name}") };
        if name == "lib.rs" || name == "main.rs" {
            continue;
        }
        assert!(doc.contains(&named), "docs/architecture.md does not describe {named}");
    }
}
