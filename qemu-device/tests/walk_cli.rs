//! `tiommu walk` on an image built with real AMD-Vi tables: the output lines, faults, and bad input.

use iommu_model::amdvi::builder::V1Builder;
use iommu_model::amdvi::dte::Dte;
use iommu_model::mem::{ByteMem, PhysMem};
use iommu_model::walk::Perm;
use std::path::PathBuf;
use std::process::{Command, Output};

const BASE: u64 = 0x8000_0000; // the image starts at 2 GiB
const DEVTAB: u64 = BASE + 0x1_0000;

fn image(name: &str) -> PathBuf {
    let mut m = ByteMem::new(BASE, 0x40_0000);
    let mut b = V1Builder::new(&mut m, BASE + 0x10_0000, BASE + 0x20_0000, 4).unwrap();
    b.map(&mut m, 0x1000, 0x1_2345_6000, 12, Perm::new(true, false)).unwrap();
    b.map(&mut m, 0x4000_0000, 0x2_0000_0000, 21, Perm::RW).unwrap();
    let devid = 0x18u64; // 00:03.0
    m.write(DEVTAB + devid * 32, &Dte::translated(b.root, 4, 5, Perm::RW).to_bytes()).unwrap();
    // 00:04.0 has a DTE with a page-table root outside the image.
    m.write(DEVTAB + 0x20 * 32, &Dte::translated(0x10_0000_0000, 3, 6, Perm::RW).to_bytes()).unwrap();
    let path = std::env::temp_dir().join(format!("tiommu-walk-{}-{name}.img", std::process::id()));
    std::fs::write(&path, &m.bytes).unwrap();
    path
}

fn walk(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tiommu")).arg("walk").args(args).output().unwrap()
}

fn lines(o: &Output) -> Vec<String> {
    String::from_utf8(o.stdout.clone()).unwrap().lines().map(str::to_owned).collect()
}

#[test]
fn translations_and_faults_one_line_per_iova_in_order() {
    let img = image("ok");
    let o = walk(&[
        "--image",
        img.to_str().unwrap(),
        "--image-base",
        "0x80000000",
        "--devtab",
        "0x80010000",
        "--devid",
        "00:03.0",
        "--iova",
        "0x1abc",
        "--iova",
        "0x40123456",
        "--iova",
        "0x2000",
        "--iova",
        "0x1000000000000",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        lines(&o),
        [
            r#"{"iova":"0x1abc","result":"ok","spa":"0x123456abc","page_size":4096,"read":true,"write":false}"#,
            r#"{"iova":"0x40123456","result":"ok","spa":"0x200123456","page_size":2097152,"read":true,"write":true}"#,
            r#"{"iova":"0x2000","result":"fault","event":"IO_PAGE_FAULT","level":1}"#,
            r#"{"iova":"0x1000000000000","result":"fault","event":"IO_PAGE_FAULT","level":4}"#,
        ]
    );
    std::fs::remove_file(img).ok();
}

#[test]
fn write_through_a_read_only_mapping_and_hardware_errors() {
    let img = image("write");
    let p = img.to_str().unwrap();
    let o = walk(&["--image", p, "--image-base", "0x80000000", "--devtab", "0x80010000", "--devid", "0x18", "--write", "--iova", "0x1000"]);
    assert_eq!(lines(&o), [r#"{"iova":"0x1000","result":"fault","event":"IO_PAGE_FAULT","level":1}"#]);
    let o = walk(&["--image", p, "--image-base", "0x80000000", "--devtab", "0x80010000", "--devid", "00:04.0", "--iova", "0x0"]);
    assert_eq!(lines(&o), [r#"{"iova":"0x0","result":"fault","event":"PAGE_TAB_HARDWARE_ERROR","level":3}"#]);
    // A device table outside the image.
    let o = walk(&["--image", p, "--devtab", "0x10000000", "--devid", "00:03.0", "--iova", "0x0"]);
    assert!(o.status.success());
    assert_eq!(lines(&o), [r#"{"iova":"0x0","result":"fault","event":"DEV_TAB_HARDWARE_ERROR"}"#]);
    // V=0: untranslated.
    let o = walk(&["--image", p, "--image-base", "0x80000000", "--devtab", "0x80010000", "--devid", "00:05.0", "--iova", "0x5000"]);
    assert_eq!(lines(&o), [r#"{"iova":"0x5000","result":"ok","spa":"0x5000","page_size":4096,"read":true,"write":true}"#]);
    std::fs::remove_file(img).ok();
}

#[test]
fn bad_arguments_fail_with_one_line() {
    let img = image("bad");
    let p = img.to_str().unwrap();
    for args in [
        vec!["--image", "/nonexistent/tiommu.img", "--devtab", "0x0", "--devid", "00:03.0", "--iova", "0x0"],
        vec!["--image", p, "--devtab", "1000", "--devid", "00:03.0", "--iova", "0x0"],
        vec!["--image", p, "--devtab", "0x800101ff", "--devid", "00:03.0", "--iova", "0x0"],
        vec!["--image", p, "--devtab", "0x0", "--devid", "00:03.0", "--iova", "0x10000000000000000"],
        vec!["--image", p, "--devtab", "0x0", "--devid", "00:03.0", "--iova", "0x1000", "--bogus"],
        vec!["--image", p, "--devtab", "0x0", "--devid", "00:33.0", "--iova", "0x0"],
        vec!["--image", p, "--devtab", "0x0", "--devid", "00:03.0"],
        vec!["--image", "/", "--devtab", "0x0", "--devid", "00:03.0", "--iova", "0x0"],
    ] {
        let o = walk(&args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(o.stdout.is_empty());
        let err = String::from_utf8(o.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    std::fs::remove_file(img).ok();
}

/// A CLI mistake names what is wrong on one line (which arguments are missing, with the usage),
/// and a bare `tiommu` lists the subcommands; both exit 2.
#[test]
fn argument_errors_say_what_is_missing() {
    let tiommu = env!("CARGO_BIN_EXE_tiommu");
    let out = std::process::Command::new(tiommu).arg("daemon").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--socket-dir") && err.contains("--events") && err.contains("usage: tiommu daemon"), "{err}");
    let out = std::process::Command::new(tiommu).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("daemon") && err.contains("ivrs") && err.contains("walk"), "the subcommands: {err}");
}
