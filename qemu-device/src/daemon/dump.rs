//! What the control channel's `dump` command writes (`tiommu dump`, docs/amd-vi.md "Dumping a
//! running guest"): guest RAM as the daemon sees it, the IOMMU's registers beside it, and the RMP
//! when SNP is on. `tiommu walk --dump DIR` reads it back (tools/dump.rs has the format).
//!
//! The files go to one directory fixed when the daemon starts (`dump/` in its socket directory):
//! whoever can reach the control socket, which a guest can through its serial port
//! (`run-vm --inject`), can ask for a dump, so no path comes from the command. Each dump replaces
//! the last one whole (written beside it, then renamed), so at most one guest RAM's worth of disk
//! is used.

use crate::secure::SecureIommu;
use crate::tools::dump::{FORMAT, IMAGE, REGS, RMP};
use crate::vfio::guest_mem::GuestMem;
use iommu_model::amdvi::mmio;
use iommu_model::mem::PhysMem;
use iommu_model::vtd::regs as vtd;
use serde_json::{json, Value};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// What is taken under the secure IOMMU's lock: small, so the guest's register accesses wait
/// only for this, not for the RAM copy.
pub struct Snapshot {
    regs: Value,
    rmp: Option<Vec<u8>>,
}

fn hex(v: u64) -> Value {
    format!("{v:#x}").into()
}

/// The registers, by the names the specs give them, and the RMP image (RMP_BASE onwards:
/// bookkeeping, then one entry per page, as rmp-model renders it).
pub fn snapshot(s: &SecureIommu) -> Snapshot {
    let iommu = if s.is_vtd() {
        let r = |off, size| hex(s.bar0_read(off, size));
        json!({"kind": "vt-d", "vtd": {
            "ver": r(vtd::VER, 4), "cap": r(vtd::CAP, 8), "ecap": r(vtd::ECAP, 8), "gsts": r(vtd::GSTS, 4),
            "rtaddr": r(vtd::RTADDR, 8), "fsts": r(vtd::FSTS, 4), "iqh": r(vtd::IQH, 8), "iqt": r(vtd::IQT, 8),
            "iqa": r(vtd::IQA, 8), "ics": r(vtd::ICS, 4),
        }})
    } else {
        let r = |off| hex(s.amdvi_register(off));
        // AMD IOMMU spec 48882 §3.4 (MMIO offsets 0x0000-0x0030, 0x01a0, 0x2000-0x2020).
        json!({"kind": "amd-vi", "amdvi": {
            "dev_tab_base": r(mmio::DEV_TABLE_BASE), "cmd_buf_base": r(mmio::CMD_BUF_BASE),
            "event_log_base": r(mmio::EVENT_LOG_BASE), "control": r(mmio::CONTROL),
            "excl_base": r(mmio::EXCL_BASE), "excl_limit": r(mmio::EXCL_LIMIT),
            "ext_features": r(mmio::EXT_FEATURES), "ext_features2": r(mmio::EXT_FEATURES2),
            "cmd_buf_head": r(mmio::CMD_BUF_HEAD), "cmd_buf_tail": r(mmio::CMD_BUF_TAIL),
            "event_log_head": r(mmio::EVENT_LOG_HEAD), "event_log_tail": r(mmio::EVENT_LOG_TAIL),
            "status": r(mmio::STATUS),
        }})
    };
    let rmp = s.rmp().map(|rmp| {
        let len = rmp_model::Rmp::table_bytes(rmp.pages());
        let mut image = vec![0u8; usize::try_from(len).unwrap_or(0)];
        rmp.read_image(0, &mut image);
        image
    });
    let snp = match &rmp {
        Some(_) => {
            let (base, end) = s.rmp_window();
            json!({"enabled": true, "pages": s.ram_pages(), "rmp": RMP, "rmp_base": hex(base), "rmp_end": hex(end)})
        }
        None => json!({"enabled": false}),
    };
    Snapshot { regs: json!({"iommu": iommu, "snp": snp}), rmp }
}

/// Write the dump into `dir` (replaced whole): the image of `regions` of `mem`, the registers and
/// the RMP of `snap`. The answer says what was written.
pub fn write(dir: &Path, snap: Snapshot, mem: &GuestMem, regions: &[(u64, u64)]) -> Result<Value, String> {
    let err = |what: &Path, e: std::io::Error| format!("{}: {e}", what.display());
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| err(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| err(&tmp, e))?;
    let image = tmp.join(IMAGE);
    let written = write_image(&image, mem, regions).map_err(|e| err(&image, e))?;
    let mut files = vec![IMAGE, REGS];
    if let Some(rmp) = &snap.rmp {
        std::fs::write(tmp.join(RMP), rmp).map_err(|e| err(&tmp.join(RMP), e))?;
        files.push(RMP);
    }
    let ram: Vec<Value> = regions.iter().map(|&(gpa, size)| json!({"gpa": hex(gpa), "size": hex(size)})).collect();
    let mut regs = snap.regs;
    regs["format"] = FORMAT.into();
    regs["image"] = IMAGE.into();
    regs["ram"] = ram.into();
    let text = serde_json::to_string_pretty(&regs).map_err(|e| e.to_string())?;
    std::fs::write(tmp.join(REGS), text + "\n").map_err(|e| err(&tmp.join(REGS), e))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| err(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| err(dir, e))?;
    Ok(json!({"ok": true, "dir": dir.display().to_string(), "files": files, "ram_bytes": regions.iter().map(|r| r.1).sum::<u64>(),
        "written_bytes": written}))
}

/// Guest RAM into a sparse file whose offsets are guest physical addresses: pages of zeros are
/// left as holes. Returns the bytes written.
fn write_image(path: &Path, mem: &GuestMem, regions: &[(u64, u64)]) -> std::io::Result<u64> {
    const CHUNK: u64 = 1 << 20;
    const PAGE: usize = 4096;
    let f = File::create(path)?;
    let top = regions.iter().map(|&(gpa, size)| gpa.saturating_add(size)).max().unwrap_or(0);
    f.set_len(top)?;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut written = 0u64;
    for &(gpa, size) in regions {
        let end = gpa.saturating_add(size);
        let mut at = gpa;
        while at < end {
            let n = (end - at).min(CHUNK);
            let chunk = &mut buf[..n as usize];
            mem.read(at, chunk).map_err(|e| std::io::Error::other(format!("guest RAM at {:#x}: {e:?}", e.addr)))?;
            for (i, page) in chunk.chunks(PAGE).enumerate() {
                if page.iter().any(|&b| b != 0) {
                    f.write_all_at(page, at + (i * PAGE) as u64)?;
                    written += page.len() as u64;
                }
            }
            at += n;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use crate::daemon::control::{Control, Target};
    use crate::secure::SecureIommu;
    use crate::testing::{guest_ram, Null};
    use crate::tools::dump::read_regs;
    use iommu_model::amdvi::builder::V1Builder;
    use iommu_model::amdvi::dte::Dte;
    use iommu_model::amdvi::mmio;
    use iommu_model::mem::PhysMem;
    use iommu_model::walk::Perm;
    use std::sync::{Arc, Mutex};

    const RAM: u64 = 4 << 20;

    /// A session's RAM with a device table and tables for 00:04.0, the unit enabled, SNP on with
    /// one guest page; then `dump` through the control channel, and the files read back.
    #[test]
    fn dump_writes_ram_registers_and_rmp_that_walk_reads() {
        let (ram, _f) = guest_ram("dump", RAM);
        let mut mem = ram.snapshot();
        let mut b = V1Builder::new(&mut mem, 0x10_0000, 0x20_0000, 3).unwrap();
        b.map(&mut mem, 0x5000, 0x30_0000, 12, Perm::RW).unwrap();
        mem.write(0x8000 + 0x20 * 32, &Dte::translated(b.root, 3, 1, Perm::RW).to_bytes()).unwrap();
        let mut s = SecureIommu::new(Arc::new(Null), Arc::new(Null));
        s.bar0_write(&mut mem, mmio::DEV_TABLE_BASE, 8, 0x8000);
        s.bar0_write(&mut mem, mmio::CONTROL, 8, mmio::control::IOMMU_EN);
        let mut rmp = rmp_model::Rmp::new(RAM >> 12);
        let guest = rmp_model::RmpEntry { assigned: true, asid: 1, gpa: 0x30_0000, ..Default::default() };
        assert!(rmp.firmware_set(0x300, guest));
        s.enable_snp_with(rmp);

        let dir = std::env::temp_dir().join(format!("tiommu-dump-test-{}", std::process::id()));
        let control = Control::default().with_dump_dir(dir.clone());
        assert_eq!(control.handle(r#"{"cmd":"dump"}"#)["ok"], false, "no session yet");
        control.attach(Target { secure: Arc::new(Mutex::new(s)), ram: ram.clone() });
        let answer = control.handle(r#"{"cmd":"dump"}"#);
        assert_eq!(answer["ok"], true, "{answer}");
        assert_eq!(answer["files"], serde_json::json!(["ram.img", "regs.json", "rmp.bin"]));
        assert_eq!(answer["ram_bytes"], RAM);

        let regs = read_regs(&dir.join("regs.json")).unwrap();
        assert_eq!(regs.ram, [(0, RAM)]);
        assert_eq!((regs.iommu.as_str(), regs.dev_tab_base, regs.control), ("amd-vi", Some(0x8000), Some(mmio::control::IOMMU_EN)));
        assert_eq!(regs.image, Some(dir.join("ram.img")));
        let image = std::fs::read(dir.join("ram.img")).unwrap();
        assert_eq!(image.len() as u64, RAM);
        let mut want = vec![0u8; RAM as usize];
        mem.read(0, &mut want).unwrap();
        assert!(image == want, "the image is guest RAM byte for byte");
        let rmp = rmp_model::Rmp::from_image(&std::fs::read(regs.rmp.unwrap()).unwrap());
        assert_eq!(rmp.pages(), RAM >> 12);
        assert_eq!(rmp.entry(0x300), Some(&guest));
        assert!(!rmp.entry(0x301).unwrap().assigned);

        // The next dump replaces this one whole.
        mem.write(0x1000, &[0xaa]).unwrap();
        assert_eq!(control.handle(r#"{"cmd":"dump"}"#)["ok"], true);
        assert_eq!(std::fs::read(dir.join("ram.img")).unwrap()[0x1000], 0xaa);
        assert!(!dir.with_extension("tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();

        let no_dumps = Control::default();
        assert!(no_dumps.handle(r#"{"cmd":"dump"}"#)["error"].as_str().unwrap().contains("no dumps"));
    }
}
