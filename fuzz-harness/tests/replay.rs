//! Every input kept under fuzz/ for the device-facing targets, replayed through the same bodies
//! libFuzzer runs: the seeds, the minimised corpora (fuzz/corpus/<target>) and each crash input
//! a campaign found, kept as a regression (fuzz/regressions/<target>). A crash found by fuzzing
//! is fixed together with its input here, so it stays fixed.

use std::path::PathBuf;

fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files: Vec<PathBuf> = ["seeds", "corpus", "regressions"]
        .iter()
        .filter_map(|d| std::fs::read_dir(fuzz.join(d).join(target)).ok())
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no kept inputs for {target}");
    for f in &files {
        let data = std::fs::read(f).unwrap();
        // The file's name in the panic message, if it fails.
        let name = f.display().to_string();
        let r = std::panic::catch_unwind(|| run(&data));
        assert!(r.is_ok(), "{name} crashes {target}");
    }
    println!("{target}: {} inputs replayed", files.len());
}

#[test]
fn functions() {
    replay("functions", tiommu_fuzz_harness::functions::run);
}

#[test]
fn descriptors() {
    replay("descriptors", tiommu_fuzz_harness::descriptors::run);
}

#[test]
fn virtio_iommu() {
    replay("virtio_iommu", tiommu_fuzz_harness::virtio_iommu::run);
}

#[test]
fn secure_iommu() {
    replay("secure_iommu", tiommu_fuzz_harness::secure_iommu::run);
}
