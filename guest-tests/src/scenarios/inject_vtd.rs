//! VT-d faults injected on purpose, and what Linux 7.3's intel_iommu makes of them
//! (`scripts/run-vm --intel-iommu --inject`; docs/fault-injection.md). The endpoint is bound to
//! vfio-pci and driven through VFIO type1, so every map and unmap is intel_iommu's own work: its
//! invalidations go through the unit's queue (dmar.c qi_submit_sync) and its fault interrupt
//! reads the unit's fault recording registers (dmar.c dmar_fault). Each scenario arms its fault
//! over the control channel, checks the lines Linux logged (their format strings quoted from
//! drivers/iommu/intel/dmar.c), the unit's registers, and that map, DMA and unmap work again.

use super::inject::{count, dmesg, field, logged, vfio, Host};
use super::*;
use crate::kernel_paths::{fill_lands, holds, VfioRing, BDF_RE, DATA_IOVA};
use std::time::Duration;

pub(super) const SCENARIOS: [Scenario; 4] = [
    ("inject_vtd_queue_error_linux_clears_iqe_and_the_invalidation_is_lost", queue_error),
    ("inject_vtd_time_out_linux_clears_ite_and_submits_again", time_out),
    ("inject_vtd_primary_fault_storm_overflows_and_linux_clears_it", primary_fault_storm),
    ("inject_vtd_wait_lost_linux_waits_forever", wait_lost),
];

/// FSTS bits (VT-d spec §11.4.9.1; Linux DMA_FSTS_*).
const PFO: u64 = 1 << 0;
const PPF: u64 = 1 << 1;
const IQE: u64 = 1 << 4;
const ITE: u64 = 1 << 6;

fn need_intel_iommu() -> R {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if !cmdline.split_whitespace().any(|a| a == "tiommu.inject=1") {
        return Err(format!("{SKIP}no control channel to the daemon (scripts/run-vm --inject)"));
    }
    if !vtd_mode() {
        return Err(format!("{SKIP}needs the kernel's intel_iommu (scripts/run-vm --intel-iommu --inject)"));
    }
    Ok(())
}

/// dmar.c qi_check_fault, the IQE branch: "Invalidation Queue Error (IQE) cleared\n".
const IQE_CLEARED: &str = "Invalidation Queue Error (IQE) cleared";
/// dmar.c qi_check_fault, the ITE branch: "Invalidation Time-out Error (ITE) cleared\n".
const ITE_CLEARED: &str = "Invalidation Time-out Error (ITE) cleared";

/// IQE at the first descriptor of intel_iommu's next submission (the unmap's page-selective
/// IOTLB invalidation): qi_submit_sync's poll (qi_check_fault) finds IQE with IQH on its first
/// descriptor, dumps it (qi_dump_fault: "VT-d detected Invalidation Queue Error: Reason %llx",
/// "QI HEAD: %s qw0 = 0x%llx, qw1 = 0x%llx\n"), copies its wait descriptor over the bad one,
/// clears IQE and returns -EINVAL, which the IOTLB flush ignores. The invalidation is lost: the
/// device still reaches the unmapped page through the IOTLB until the next invalidation of it.
fn queue_error(_r: &mut Rig) -> R {
    need_intel_iommu()?;
    let mut host = Host::open()?;
    let (v, mem) = vfio()?;
    let mut ep = VfioRing::start(&v.device, &mem)?;
    fill_lands(&mut ep, &mem, 0x1000, DATA_IOVA, 0x1111)?;
    let before = count(&dmesg(), IQE_CLEARED);
    host.inject("inv-queue-error", "")?;
    v.unmap(DATA_IOVA, 0x1000)?;
    check!(logged(IQE_CLEARED, before), "Linux logged no \"{IQE_CLEARED}\"");
    expect_dmesg(r"DMAR: VT-d detected Invalidation Queue Error: Reason 2");
    // qw1: the address with IH (bit 6, leaf entries only) as cache.c's page-selective flush sets it.
    expect_dmesg(r"DMAR: QI HEAD: IOTLB Invalidation qw0 = 0x[0-9a-f]+, qw1 = 0x2000[0-9a-f]{2}\b");
    expect_dmesg(r"DMAR: Invalidation Queue Error \(IQE\) cleared");
    expect_event(expect!(Injected { fault: "inv-queue-error".into(), event: Some("IQE".into()) }));
    let s = host.status()?;
    let fsts = hex(&s, "fsts")?;
    check!(fsts & IQE == 0 && hex(&s, "iqh")? == hex(&s, "iqt")?, "the queue did not resume and drain: {s}");
    // The lost invalidation: the IOTLB still maps the page VFIO unmapped.
    let st = ep.fill(DATA_IOVA, 0x2222)?;
    println!("# after the unmap whose invalidation was replaced, FILL status {st} (OK: the IOTLB still maps the page)");
    check!(st == DmaStatus::Ok && holds(&mem, 0x1000, 0x2222), "the stale IOTLB entry should still let the FILL land (status {st})");
    // The next invalidation of the page takes: map and unmap again, and the IOVA faults.
    v.map(mem.addr() + 0x1000, DATA_IOVA, 0x1000)?;
    fill_lands(&mut ep, &mem, 0x1000, DATA_IOVA, 0x3333)?;
    v.unmap(DATA_IOVA, 0x1000)?;
    check!(ep.fill(DATA_IOVA, 0x4444)? == DmaStatus::IoPageFault, "the second unmap did not reach the IOTLB");
    check!(count(&dmesg(), IQE_CLEARED) == before + 1, "more than one IQE");
    Ok(())
}

/// ITE at the unmap's wait descriptor (IQER.ITESID = the endpoint): the IOTLB invalidation before it
/// ran, the wait was aborted. qi_check_fault dumps it ("VT-d detected Invalidation Time-out
/// Error: SID %llx"), clears ITE ("Invalidation Time-out Error (ITE) cleared\n"), marks the
/// pending waits QI_ABORT, finds the device present and returns -EAGAIN: qi_submit_sync
/// submits the batch again, and it completes.
fn time_out(_r: &mut Rig) -> R {
    need_intel_iommu()?;
    let mut host = Host::open()?;
    let (v, mem) = vfio()?;
    let mut ep = VfioRing::start(&v.device, &mem)?;
    fill_lands(&mut ep, &mem, 0x1000, DATA_IOVA, 0x5555)?;
    let before = count(&dmesg(), ITE_CLEARED);
    host.inject("inv-time-out", &format!(r#""device":"{}""#, *ENDPOINT))?;
    v.unmap(DATA_IOVA, 0x1000)?;
    check!(logged(ITE_CLEARED, before), "Linux logged no \"{ITE_CLEARED}\"");
    expect_dmesg(&format!(r"DMAR: VT-d detected Invalidation Time-out Error: SID {:x}\b", ENDPOINT.0));
    expect_dmesg(r"DMAR: Invalidation Time-out Error \(ITE\) cleared");
    expect_event(expect!(Injected { fault: "inv-time-out".into(), event: Some("ITE".into()), devid: Some(*ENDPOINT) }));
    let s = host.status()?;
    check!(hex(&s, "fsts")? & ITE == 0 && hex(&s, "iqh")? == hex(&s, "iqt")?, "the queue did not resume and drain: {s}");
    check!(ep.fill(DATA_IOVA, 0x6666)? == DmaStatus::IoPageFault, "the unmap's invalidation did not take");
    v.map(mem.addr() + 0x1000, DATA_IOVA, 0x1000)?;
    fill_lands(&mut ep, &mem, 0x1000, DATA_IOVA, 0x7777)?;
    check!(count(&dmesg(), ITE_CLEARED) == before + 1, "more than one ITE");
    Ok(())
}

/// 600 spurious fault records at once: the 8 fault recording registers fill, PFO drops the rest,
/// one fault event. dmar_fault logs "DRHD: handling fault status reg %x\n", then each record
/// ("[%s NO_PASID] Request device [%04x:%02x:%02x.%d] fault addr 0x%llx [fault reason 0x%02x]
/// %s\n"), clears each F and then PFO and PPF. Its one rate limit (DEFAULT_RATELIMIT_BURST 10 in
/// 5 s) is spent by the first line and by every turn of the loop, the last one (no F) too: the
/// storm starts in a fresh interval, so the 10 calls print all 8 records. A real fault
/// afterwards is recorded again (its lines are over the limit), and DMA goes on.
fn primary_fault_storm(_r: &mut Rig) -> R {
    need_intel_iommu()?;
    let mut host = Host::open()?;
    let (v, mem) = vfio()?;
    let mut ep = VfioRing::start(&v.device, &mem)?;
    let storm = 0xdead_0000u64;
    quiet_dmar();
    let a = host.inject("primary-fault", &format!(r#""device":"{}","iova":"{storm:#x}","count":600"#, *ENDPOINT))?;
    let written = field(&a, "logged").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    check!(written == 8, "{written} records written: the unit has 8 fault recording registers");
    check!(
        poll(|| host.status().is_ok_and(|s| hex(&s, "fsts").is_ok_and(|f| f & (PFO | PPF) == 0))),
        "Linux did not clear the records and PFO"
    );
    let shown = count(&dmesg(), &format!("fault addr {storm:#x}"));
    println!("# Linux printed {shown} of the {written} records (dmar_fault's rate limit: 10 calls in 5 s)");
    check!(shown == 8, "Linux printed {shown} of the 8 records in a fresh rate-limit interval");
    expect_dmesg(r"DMAR: DRHD: handling fault status reg [0-9a-f]*3\b");
    expect_dmesg(&format!(
        r"DMAR: \[DMA Write NO_PASID\] Request device \[{}\] fault addr {storm:#x} \[fault reason 0x05\] PTE Write access is not set",
        *BDF_RE
    ));
    expect_event(expect!(Injected { fault: "primary-fault".into(), event: Some("DMA_REMAP_FAULT".into()) }));
    // A real fault is recorded again (PFO is clear), and Linux takes it from the register.
    let unmapped = DATA_IOVA + 0x10_0000;
    check!(ep.fill(unmapped, 0x8888)? == DmaStatus::IoPageFault, "FILL to an unmapped IOVA did not fault");
    expect_event(expect!(TranslationFault { devid: *ENDPOINT, iova: unmapped, logged: true, via: Via::VtD }));
    check!(
        poll(|| host.status().is_ok_and(|s| hex(&s, "fsts").is_ok_and(|f| f & (PFO | PPF) == 0))),
        "Linux did not take the real fault's record"
    );
    fill_lands(&mut ep, &mem, 0x1000, DATA_IOVA, 0x9999)
}

/// The unmap's wait descriptor writes no status. qi_submit_sync polls the status with
/// interrupts off and the queue's lock held, asking qi_check_fault each time, which finds
/// nothing in FSTS: there is no time-out, so the CPU spins for as long as the write is missing,
/// which is forever. The guest never gets past the unmap: this scenario hangs the run, which
/// --timeout ends. It runs only when asked for (--append tiommu.inject_wait_lost=1), last.
fn wait_lost(_r: &mut Rig) -> R {
    need_intel_iommu()?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if !cmdline.split_whitespace().any(|a| a == "tiommu.inject_wait_lost=1") {
        return Err(format!(
            "{SKIP}hangs the guest for good (Linux has no time-out): run-vm --intel-iommu --inject --append tiommu.inject_wait_lost=1 --timeout 60"
        ));
    }
    let mut host = Host::open()?;
    let (v, mem) = vfio()?;
    let mut ep = VfioRing::start(&v.device, &mem)?;
    fill_lands(&mut ep, &mem, 0x1000, DATA_IOVA, 0xaaaa)?;
    host.inject("inv-wait-lost", "")?;
    expect_event(expect!(Injected { fault: "inv-wait-lost".into() }));
    println!("# VFIO_IOMMU_UNMAP_DMA now: Linux waits for a status write that never comes (the run ends at --timeout)");
    let t = Instant::now();
    v.unmap(DATA_IOVA, 0x1000)?;
    Err(format!("the unmap returned after {:.2} s: Linux stopped waiting for the lost status write", t.elapsed().as_secs_f64()))
}

/// Wait until 5 s have passed since intel_iommu's last line: dmar_fault's rate-limit interval
/// (DEFAULT_RATELIMIT_INTERVAL) begins at a call that prints, so one starts afresh after it.
fn quiet_dmar() {
    let log = dmesg();
    let last = log.lines().rev().find(|l| l.contains("DMAR:")).and_then(|l| {
        let ts = l.strip_prefix('[')?.split(']').next()?;
        ts.trim().parse::<f64>().ok()
    });
    let now = std::fs::read_to_string("/proc/uptime").ok().and_then(|u| u.split_whitespace().next()?.parse::<f64>().ok());
    if let (Some(last), Some(now)) = (last, now) {
        let wait = last + 5.5 - now;
        if wait > 0.0 {
            println!("# waiting {wait:.1} s for dmar_fault's rate limit to start a new interval");
            std::thread::sleep(Duration::from_secs_f64(wait));
        }
    }
}

/// A register of the status answer's "vtd" object, as hex.
fn hex(status: &str, name: &str) -> Result<u64, String> {
    let vtd = &status[status.find(r#""vtd":"#).ok_or_else(|| format!("no VT-d registers in {status}"))?..];
    field(vtd, name).and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok()).ok_or_else(|| format!("no {name} in {status}"))
}
