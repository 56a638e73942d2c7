//! A QEMU TCG plugin that checks every guest CPU store against the RMP the tiommu daemon
//! publishes, as an SEV-SNP CPU would: a host write to a guest-assigned page is an RMP #PF (error
//! code bit 31). Under emulation nothing stops such a write; this makes it visible.
//!
//! Load with `-plugin libtiommu_rmp_plugin.so,rmp=STATE,events=FILE[,mode=report|stop]`
//! (the C API glue is ffi.rs):
//! STATE is the file `tiommu daemon --rmp-state` keeps (raw 16-byte entries at pfn × 16, the
//! daemon the only writer); every violation is one JSON line in FILE, an `abi::event` record
//! (`rmp_cpu_violation`, without the daemon's `ts`); `mode=stop` ends the VM at the first one, as the hardware fault would end the host.
//! All of it runs in the guest's "host" context: the guest kernel here plays the hypervisor.

mod ffi;

use rmp_model::RmpEntry;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryRegion, GuestRegionMmap, MemoryRegionAddress};

struct State {
    rmp: GuestRegionMmap,
    pages: u64,
    out: Mutex<File>,
    stop: bool,
    reports: AtomicU64,
}

static STATE: OnceLock<State> = OnceLock::new();

fn entry(s: &State, pfn: u64) -> Option<RmpEntry> {
    if pfn >= s.pages {
        return None;
    }
    let mut b = [0u8; 16];
    s.rmp.read_slice(&mut b, MemoryRegionAddress(pfn * 16)).ok()?;
    Some(RmpEntry::from_raw(&b))
}

/// The low qword of a raw entry (assigned = bit 0, 2 MiB = bit 1), 0 outside the file.
fn lo(s: &State, pfn: u64) -> u64 {
    if pfn >= s.pages {
        return 0;
    }
    s.rmp.read_obj::<u64>(MemoryRegionAddress(pfn * 16)).unwrap_or(0)
}

fn on_store(vcpu: u32, pc: u64, vaddr: u64, spa: u64) {
    let Some(s) = STATE.get() else { return };
    // Fast path, two 8-byte reads: neither the page nor an assigned 2 MiB page holding it.
    let pfn = spa >> 12;
    if lo(s, pfn) & 1 == 0 && lo(s, pfn & !511) & 3 != 3 {
        return;
    }
    if let Err((fault, e)) = rmp_model::cpu::host_write(|pfn| entry(s, pfn), spa, false) {
        s.reports.fetch_add(1, Ordering::Relaxed);
        let rec = abi::event::Event::RmpCpuViolation(abi::event::RmpCpuViolation {
            vcpu,
            pc,
            vaddr,
            spa,
            error_code: fault.error_code,
            rmp: abi::event::RmpEntry {
                assigned: e.assigned,
                asid: e.asid.into(),
                gpa: e.gpa,
                page_size: e.page_size.bytes(),
                immutable: e.immutable,
                validated: e.validated,
            },
        });
        let line = serde_json::to_string(&rec).unwrap_or_default();
        let mut out = s.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        if s.stop {
            eprintln!("tiommu-rmp-plugin: RMP #PF (error code {:#x}) on a host write to {spa:#x}; stopping the VM", fault.error_code);
            std::process::exit(1);
        }
    }
}

/// Parse the arguments (`rmp=STATE,events=FILE[,mode=report|stop]`) and open both files.
fn install(args: &[String]) -> Result<(), String> {
    let arg = |k: &str| args.iter().find_map(|a| a.strip_prefix(k).and_then(|v| v.strip_prefix('=')).map(str::to_owned));
    let path = arg("rmp").ok_or("missing rmp=STATE")?;
    let events = arg("events").ok_or("missing events=FILE")?;
    let stop = match arg("mode").as_deref() {
        None | Some("report") => false,
        Some("stop") => true,
        Some(m) => return Err(format!("mode={m}: expected report or stop")),
    };
    let file = OpenOptions::new().read(true).open(&path).map_err(|e| format!("{path}: {e}"))?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    // Read-only: the daemon is the only writer.
    let region = MmapRegionBuilder::new(size as usize)
        .with_file_offset(FileOffset::new(file, 0))
        .with_mmap_prot(libc::PROT_READ)
        .with_mmap_flags(libc::MAP_SHARED)
        .build()
        .map_err(|e| format!("map {path}: {e}"))?;
    let rmp = GuestRegionMmap::new(region, GuestAddress(0)).map_err(|e| format!("map {path}: {e}"))?;
    let out = OpenOptions::new().create(true).append(true).open(&events).map_err(|e| format!("{events}: {e}"))?;
    let pages = rmp.len() / 16;
    STATE.set(State { rmp, pages, out: Mutex::new(out), stop, reports: AtomicU64::new(0) }).map_err(|_| "installed twice".to_string())
}
