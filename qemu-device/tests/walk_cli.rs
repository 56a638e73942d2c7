//! `tiommu walk` on an image built with real AMD-Vi tables: the output lines, faults, the trace,
//! the RMP check, dumps (regs.json), and bad input.

use iommu_model::amdvi::builder::V1Builder;
use iommu_model::amdvi::dte::Dte;
use iommu_model::fmt::amdv1;
use iommu_model::mem::{ByteMem, PhysMem};
use iommu_model::walk::Perm;
use rmp_model::{Rmp, RmpEntry};
use serde_json::Value;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BASE: u64 = 0x8000_0000; // the image starts at 2 GiB
const DEVTAB: u64 = BASE + 0x1_0000;

/// The image's memory and its 00:03.0 page-table root.
struct Fixture {
    mem: ByteMem,
    root: u64,
}

fn fixture() -> Fixture {
    let mut m = ByteMem::new(BASE, 0x40_0000);
    let mut b = V1Builder::new(&mut m, BASE + 0x10_0000, BASE + 0x20_0000, 4).unwrap();
    b.map(&mut m, 0x1000, 0x1_2345_6000, 12, Perm::new(true, false)).unwrap();
    b.map(&mut m, 0x4000_0000, 0x2_0000_0000, 21, Perm::RW).unwrap();
    // Low pages, which the RMP tests cover.
    b.map(&mut m, 0x8000, 0x7000, 12, Perm::RW).unwrap();
    b.map(&mut m, 0x9000, 0x8000, 12, Perm::RW).unwrap();
    let devid = 0x18u64; // 00:03.0
    m.write(DEVTAB + devid * 32, &Dte::translated(b.root, 4, 5, Perm::RW).to_bytes()).unwrap();
    // 00:04.0 has a DTE with a page-table root outside the image.
    m.write(DEVTAB + 0x20 * 32, &Dte::translated(0x10_0000_0000, 3, 6, Perm::RW).to_bytes()).unwrap();
    Fixture { mem: m, root: b.root }
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tiommu-walk-{}-{name}", std::process::id()))
}

fn image(name: &str) -> PathBuf {
    let path = tmp(&format!("{name}.img"));
    std::fs::write(&path, &fixture().mem.bytes).unwrap();
    path
}

fn walk(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tiommu")).arg("walk").args(args).output().unwrap()
}

fn lines(o: &Output) -> Vec<String> {
    String::from_utf8(o.stdout.clone()).unwrap().lines().map(str::to_owned).collect()
}

fn json_lines(o: &Output) -> Vec<Value> {
    lines(o).iter().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
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
    assert!(o.status.success(), "{}", stderr(&o));
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
fn write_through_a_read_only_mapping() {
    let img = image("write");
    let p = img.to_str().unwrap();
    let o = walk(&["--image", p, "--image-base", "0x80000000", "--devtab", "0x80010000", "--devid", "0x18", "--write", "--iova", "0x1000"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(lines(&o), [r#"{"iova":"0x1000","result":"fault","event":"IO_PAGE_FAULT","level":1}"#]);
    std::fs::remove_file(img).ok();
}

/// A table the image does not hold is not an answer the image can give: the IOVA's line says so,
/// stderr says where, and the exit status is 1, after every IOVA has its line.
#[test]
fn tables_outside_the_image_exit_non_zero() {
    let img = image("outside");
    let p = img.to_str().unwrap();
    // 00:04.0's page-table root is at 64 GiB.
    let o = walk(&["--image", p, "--image-base", "0x80000000", "--devtab", "0x80010000", "--devid", "00:04.0", "--iova", "0x0"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(lines(&o), [r#"{"iova":"0x0","result":"outside_image","addr":"0x1000000000","level":3}"#]);
    let err = stderr(&o);
    assert!(err.contains("level-3 page table entry") && err.contains("0x1000000000") && err.contains("outside the image"), "{err}");
    assert!(err.contains("0x80000000..0x80400000"), "says what the image holds: {err}");
    // The device table itself outside the image; a second IOVA still gets its line.
    let o = walk(&["--image", p, "--devtab", "0x10000000", "--devid", "00:03.0", "--iova", "0x0", "--iova", "0x1000"]);
    assert_eq!(o.status.code(), Some(1));
    let l = json_lines(&o);
    assert_eq!(l.len(), 2);
    assert_eq!(l[0]["result"], "outside_image");
    assert_eq!(l[0]["addr"], "0x10000300", "00:03.0's DTE is entry 0x18");
    assert!(l[0].get("level").is_none());
    assert!(stderr(&o).contains("00:03.0's device table entry at 0x10000300"), "{}", stderr(&o));
    std::fs::remove_file(img).ok();
}

/// V=0: the IOMMU passes the device's requests through; the walk says so rather than quietly
/// printing IOVA = SPA.
#[test]
fn a_dte_with_v0_is_flagged() {
    let img = image("v0");
    let p = img.to_str().unwrap();
    let o = walk(&[
        "--image",
        p,
        "--image-base",
        "0x80000000",
        "--devtab",
        "0x80010000",
        "--devid",
        "00:05.0",
        "--iova",
        "0x5000",
        "--iova",
        "0x6000",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        lines(&o),
        [
            r#"{"iova":"0x5000","result":"ok","spa":"0x5000","page_size":4096,"read":true,"write":true,"dte_valid":false}"#,
            r#"{"iova":"0x6000","result":"ok","spa":"0x6000","page_size":4096,"read":true,"write":true,"dte_valid":false}"#,
        ]
    );
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "one warning, not one per IOVA: {err}");
    assert!(err.contains("warning") && err.contains("00:05.0's DTE at 0x80010500 has V=0"), "{err}");
    // A valid DTE gets no such field or warning.
    let o = walk(&["--image", p, "--image-base", "0x80000000", "--devtab", "0x80010000", "--devid", "00:03.0", "--iova", "0x1000"]);
    assert!(o.stderr.is_empty() && !lines(&o)[0].contains("dte_valid"));
    std::fs::remove_file(img).ok();
}

/// --trace: the DTE, then each level's entry as the walk read it, top first, then the result.
#[test]
fn trace_shows_every_entry_read() {
    let f = fixture();
    let img = image("trace");
    let p = img.to_str().unwrap();
    let o =
        walk(&["--image", p, "--image-base", "0x80000000", "--devtab", "0x80010000", "--devid", "00:03.0", "--trace", "--iova", "0x1abc"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let l = json_lines(&o);
    assert_eq!(l.len(), 6, "DTE, 4 levels, result: {l:?}");
    assert_eq!(l[0]["trace"], "dte");
    assert_eq!(l[0]["addr"], format!("{:#x}", DEVTAB + 0x18 * 32));
    assert_eq!((l[0]["v"].clone(), l[0]["tv"].clone(), l[0]["mode"].clone()), (true.into(), true.into(), 4.into()));
    assert_eq!(l[0]["pt_root"], format!("{:#x}", f.root));
    assert_eq!(l[0]["domain_id"], 5);
    // Follow the tables by hand from the root: IOVA 0x1abc indexes entry 0 at levels 4..2 and
    // entry 1 at level 1.
    let mut table = f.root;
    for (i, level) in (1..=4u8).rev().enumerate() {
        let t = &l[i + 1];
        let index = if level == 1 { 1 } else { 0 };
        let addr = table + index * 8;
        let raw = f.mem.read_u64(addr).unwrap();
        assert_eq!(t["trace"], "pte");
        assert_eq!(t["iova"], "0x1abc");
        assert_eq!(t["level"], level);
        assert_eq!(t["addr"], format!("{addr:#x}"));
        assert_eq!(t["raw"], format!("{raw:#x}"));
        assert_eq!(t["pr"], true);
        assert_eq!(t["address"], format!("{:#x}", raw & amdv1::ADDR_MASK));
        if level > 1 {
            assert_eq!((t["entry"].as_str(), t["next_level"].as_u64()), (Some("table"), Some(u64::from(level) - 1)));
        } else {
            assert_eq!((t["entry"].as_str(), t["next_level"].as_u64()), (Some("page"), Some(0)));
            assert_eq!((t["page"].as_str(), t["page_size"].as_u64()), (Some("0x123456000"), Some(4096)));
            assert_eq!((t["ir"].as_bool(), t["iw"].as_bool()), (Some(true), Some(false)));
        }
        table = raw & amdv1::ADDR_MASK;
    }
    assert_eq!(l[5]["result"], "ok");
    // A walk that stops early shows the entry that stopped it.
    let o =
        walk(&["--image", p, "--image-base", "0x80000000", "--devtab", "0x80010000", "--devid", "00:03.0", "--trace", "--iova", "0x2000"]);
    let l = json_lines(&o);
    assert_eq!(l.len(), 6);
    assert_eq!((l[4]["level"].as_u64(), l[4]["entry"].as_str(), l[4]["pr"].as_bool()), (Some(1), Some("not_present"), Some(false)));
    std::fs::remove_file(img).ok();
}

/// The RMP image of 16 pages: page 7 belongs to a guest (ASID 3), the rest to the hypervisor.
fn rmp_file(name: &str) -> PathBuf {
    let mut rmp = Rmp::new(16);
    assert!(rmp.firmware_set(7, RmpEntry { assigned: true, asid: 3, validated: true, gpa: 0x4000, ..Default::default() }));
    let mut image = vec![0u8; Rmp::table_bytes(16) as usize];
    rmp.read_image(0, &mut image);
    let path = tmp(&format!("{name}.rmp"));
    std::fs::write(&path, image).unwrap();
    path
}

/// --rmp: the translated page's entry and the T=0 check (a write to a guest page is refused, a
/// read allowed, a page past the RMP unchecked).
#[test]
fn rmp_check_of_the_translated_page() {
    let img = image("rmp");
    let rmp = rmp_file("rmp");
    let (p, r) = (img.to_str().unwrap(), rmp.to_str().unwrap());
    let common = ["--image", p, "--image-base", "0x80000000", "--devtab", "0x80010000", "--devid", "00:03.0", "--rmp", r];
    let o = walk(&[&common[..], &["--write", "--iova", "0x8010", "--iova", "0x9000", "--iova", "0x40000000"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let l = json_lines(&o);
    assert_eq!(l[0]["spa"], "0x7010");
    let e = &l[0]["rmp"];
    assert_eq!(
        (e["pfn"].as_str(), e["assigned"].as_bool(), e["asid"].as_u64(), e["gpa"].as_str()),
        (Some("0x7"), Some(true), Some(3), Some("0x4000"))
    );
    assert_eq!(
        (e["result"].as_str(), e["event"].as_str(), e["reason"].as_str()),
        (Some("refused"), Some("RMP_PAGE_FAULT"), Some("write to assigned page"))
    );
    assert_eq!((l[1]["rmp"]["assigned"].as_bool(), l[1]["rmp"]["result"].as_str()), (Some(false), Some("allowed")));
    assert_eq!((l[2]["rmp"]["covered"].as_bool(), l[2]["rmp"]["result"].as_str()), (Some(false), Some("allowed")));
    let o = walk(&[&common[..], &["--iova", "0x8010"]].concat());
    assert_eq!(json_lines(&o)[0]["rmp"]["result"], "allowed", "T=0 reads of guest pages are allowed");
    // A fault has no page to check.
    let o = walk(&[&common[..], &["--iova", "0x2000"]].concat());
    assert!(json_lines(&o)[0].get("rmp").is_none());
    std::fs::remove_file(img).ok();
    std::fs::remove_file(rmp).ok();
}

/// A dump directory as `tiommu dump` writes it: the image at GPA offsets, two RAM regions with a
/// hole between, the Device Table Base register with its Size, the RMP.
fn dump_dir(name: &str, control: u64, kind: &str) -> PathBuf {
    let dir = tmp(&format!("{name}.dump"));
    std::fs::create_dir_all(&dir).unwrap();
    let f = fixture();
    // Sparse, as the daemon writes it: GPA 0 up to the image's base is a hole.
    let mut img = std::fs::File::create(dir.join("ram.img")).unwrap();
    img.set_len(BASE).unwrap();
    img.seek(SeekFrom::Start(BASE)).unwrap();
    img.write_all(&f.mem.bytes).unwrap();
    std::fs::copy(rmp_file(name), dir.join("rmp.bin")).unwrap();
    // Size 0: one 4 KiB page of DTEs, 128 of them (00:00.0 to 00:0f.7).
    let regs = serde_json::json!({
        "format": "tiommu-dump 1", "image": "ram.img",
        "ram": [{"gpa": "0x0", "size": "0xa0000"}, {"gpa": "0x80000000", "size": "0x400000"}],
        "iommu": {"kind": kind, "amdvi": {"dev_tab_base": "0x80010000", "control": format!("{control:#x}")}},
        "snp": {"enabled": true, "rmp": "rmp.bin", "pages": 16},
    });
    std::fs::write(dir.join("regs.json"), regs.to_string()).unwrap();
    dir
}

#[test]
fn a_dump_gives_image_registers_and_rmp() {
    let dir = dump_dir("dump", 1, "amd-vi");
    let d = dir.to_str().unwrap();
    let o = walk(&["--dump", d, "--devid", "00:03.0", "--write", "--iova", "0x8000", "--iova", "0x40000000"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let l = json_lines(&o);
    assert_eq!((l[0]["spa"].as_str(), l[0]["rmp"]["result"].as_str()), (Some("0x7000"), Some("refused")));
    assert_eq!(l[1]["spa"], "0x200000000");
    // The register's Size holds 128 DTEs: 00:10.0 is past the table.
    let o = walk(&["--dump", d, "--devid", "00:10.0", "--iova", "0x0"]);
    assert_eq!(lines(&o), [r#"{"iova":"0x0","result":"fault","event":"ILLEGAL_DEV_TABLE_ENTRY"}"#]);
    // --regs with the image it names; the hole between the RAM regions is not memory, though the
    // image file has bytes there.
    let regs = dir.join("regs.json");
    let o = walk(&["--regs", regs.to_str().unwrap(), "--devid", "00:03.0", "--iova", "0x8000"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(json_lines(&o)[0].get("rmp").is_none(), "--regs alone takes no RMP");
    let mut bad = std::fs::read_to_string(&regs).unwrap();
    bad = bad.replace("0x80010000", "0x100000");
    std::fs::write(&regs, bad).unwrap();
    let o = walk(&["--regs", regs.to_str().unwrap(), "--devid", "00:03.0", "--iova", "0x8000"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("the dump's RAM is 0x0..0xa0000, 0x80000000..0x80400000"), "{}", stderr(&o));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_dump_of_a_disabled_or_vtd_unit_says_so() {
    let dir = dump_dir("off", 0, "amd-vi");
    let o = walk(&["--dump", dir.to_str().unwrap(), "--devid", "00:03.0", "--iova", "0x8000"]);
    assert!(o.status.success());
    assert!(stderr(&o).contains("IommuEn = 0"), "{}", stderr(&o));
    std::fs::remove_dir_all(dir).ok();
    let dir = dump_dir("vtd", 1, "vt-d");
    let o = walk(&["--dump", dir.to_str().unwrap(), "--devid", "00:03.0", "--iova", "0x8000"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("vt-d unit; tiommu walk reads AMD-Vi tables"), "{}", stderr(&o));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_arguments_fail_with_one_line() {
    let img = image("bad");
    let p = img.to_str().unwrap();
    let not_a_dump = tmp("not-a-dump");
    std::fs::create_dir_all(&not_a_dump).unwrap();
    std::fs::write(not_a_dump.join("regs.json"), r#"{"format":"something else"}"#).unwrap();
    for args in [
        vec!["--image", "/nonexistent/tiommu.img", "--devtab", "0x0", "--devid", "00:03.0", "--iova", "0x0"],
        vec!["--image", p, "--devtab", "1000", "--devid", "00:03.0", "--iova", "0x0"],
        vec!["--image", p, "--devtab", "0x800101ff", "--devid", "00:03.0", "--iova", "0x0"],
        vec!["--image", p, "--devtab", "0x0", "--devid", "00:03.0", "--iova", "0x10000000000000000"],
        vec!["--image", p, "--devtab", "0x0", "--devid", "00:03.0", "--iova", "0x1000", "--bogus"],
        vec!["--image", p, "--devtab", "0x0", "--devid", "00:33.0", "--iova", "0x0"],
        vec!["--image", p, "--devtab", "0x0", "--devid", "00:03.0"],
        vec!["--image", "/", "--devtab", "0x0", "--devid", "00:03.0", "--iova", "0x0"],
        // Neither a device table nor registers.
        vec!["--image", p, "--devid", "00:03.0", "--iova", "0x0"],
        vec!["--dump", "/nonexistent/dump", "--devid", "00:03.0", "--iova", "0x0"],
        vec!["--dump", not_a_dump.to_str().unwrap(), "--devid", "00:03.0", "--iova", "0x0"],
        vec!["--dump", not_a_dump.to_str().unwrap(), "--devtab", "0x0", "--devid", "00:03.0", "--iova", "0x0"],
        vec!["--image", p, "--devtab", "0x0", "--devid", "00:03.0", "--rmp", "/nonexistent/rmp", "--iova", "0x0"],
    ] {
        let o = walk(&args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(o.stdout.is_empty());
        let err = String::from_utf8(o.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    std::fs::remove_file(img).ok();
    std::fs::remove_dir_all(not_a_dump).ok();
}

/// abi::Bdf's forms: bus:dev.fn or 0x-prefixed hex. A bare number is refused, as `32` could mean
/// 0x32 or 32 decimal (00:04.0).
#[test]
fn devid_forms() {
    let img = image("devid");
    let p = img.to_str().unwrap();
    let run =
        |devid: &str| walk(&["--image", p, "--image-base", "0x80000000", "--devtab", "0x80010000", "--devid", devid, "--iova", "0x1000"]);
    for ok in ["00:03.0", "0x18", "0X18"] {
        let o = run(ok);
        assert!(o.status.success(), "{ok}: {}", stderr(&o));
        assert!(lines(&o)[0].contains(r#""spa":"0x123456000""#), "{ok}");
    }
    for bad in ["24", "18", "ffff", "0x10000", "00:03"] {
        let o = run(bad);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        let err = stderr(&o);
        assert!(err.contains("00:04.0") && err.contains("0x20"), "{bad}: the forms taken are named: {err}");
    }
    std::fs::remove_file(img).ok();
}

/// Every tool that names a function takes the same forms (daemon, ivrs, viot, dmar).
#[test]
fn other_tools_refuse_a_decimal_bdf_too() {
    let out = tmp("acpi.bin");
    let o = out.to_str().unwrap();
    for args in [
        vec!["ivrs", "--mmio", "0xfe000000", "--endpoint", "32", "-o", o],
        vec!["viot", "--iommu", "00:05.0", "--endpoint", "32", "-o", o],
        vec!["dmar", "--mmio", "0xfe000000", "--endpoint", "32", "-o", o],
        vec!["daemon", "--socket-dir", "/nonexistent", "--events", "/nonexistent/e", "--endpoint-bdf", "32"],
    ] {
        let r = Command::new(env!("CARGO_BIN_EXE_tiommu")).args(&args).output().unwrap();
        assert_eq!(r.status.code(), Some(2), "{args:?}: {}", stderr(&r));
        assert!(stderr(&r).contains("'32' is not bus:dev.fn"), "{args:?}: {}", stderr(&r));
    }
    for args in [
        vec!["ivrs", "--mmio", "0xfe000000", "--endpoint", "0x20", "-o", o],
        vec!["viot", "--iommu", "00:05.0", "--endpoint", "00:04.0", "-o", o],
    ] {
        let r = Command::new(env!("CARGO_BIN_EXE_tiommu")).args(&args).output().unwrap();
        assert!(r.status.success(), "{args:?}: {}", stderr(&r));
    }
    std::fs::remove_file(Path::new(o)).ok();
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
    assert!(err.contains("daemon") && err.contains("ivrs") && err.contains("walk") && err.contains("dump"), "the subcommands: {err}");
}
