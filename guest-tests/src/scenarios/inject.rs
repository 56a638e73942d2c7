//! Faults injected on purpose, and what the drivers make of them (`scripts/run-vm --inject`;
//! docs/fault-injection.md). The guest asks the daemon through its third serial port, which QEMU
//! connects to the daemon's control socket, so each fault fires exactly when the scenario is
//! ready for it; then the scenario checks what Linux's amd_iommu logged and did, what the model's
//! registers say, and that DMA works again once the fault is over. With the kernel's amd_iommu
//! the AMD-Vi faults; otherwise this program's own TDISP flow, DOE requester and ring.

use super::*;
use crate::kernel_paths::{fill_lands, holds, VfioRing, BDF, DATA_IOVA, RING_IOVA as VFIO_RING_IOVA};
use crate::rig::find_function;
use crate::sys::vfio::{bind_vfio_pci, UserMem, Vfio};
use crate::sys::{Bar, Config};
use abi::doe::{reg as doe_reg, Ctrl as DoeCtrl, Status as DoeStatus};
use iommu_model::amdvi::mmio::control;
use std::io::{Read, Write};
use std::time::Duration;

pub(super) const SCENARIOS: [Scenario; 10] = [
    ("inject_completion_wait_lost_linux_times_out_and_carries_on", completion_wait_lost),
    ("inject_event_log_overflow_linux_restarts_logging", event_log_overflow),
    // Before the storm: Linux rate-limits a device's fault messages (10 in 5 s).
    ("inject_table_and_rmp_hardware_errors_abort_one_request", table_hardware_errors),
    ("inject_io_page_fault_storm_overflows_and_linux_recovers", io_page_fault_storm),
    ("inject_command_errors_stop_the_command_processor", command_hardware_error),
    ("inject_tdi_error_mid_t1_dma_then_stop_and_rebind", tdi_error),
    ("inject_rmp_hw_error_aborts_one_dma", rmp_hw_error),
    ("inject_rogue_endpoint_dma_is_checked_like_any", rogue_dma),
    ("inject_ring_stall_until_ctrl_reset", ring_stall),
    ("inject_doe_busy_error_and_abort_as_linux_requests", doe_faults),
];

/// Injection scenarios run only when run-vm connected the control channel.
fn inject_mode() -> R {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if !cmdline.split_whitespace().any(|a| a == "tiommu.inject=1") {
        return Err(format!("{SKIP}no control channel to the daemon (scripts/run-vm --inject)"));
    }
    Ok(())
}

fn need_amd_iommu() -> R {
    inject_mode()?;
    if !amdvi_mode() {
        return Err(format!("{SKIP}needs the kernel's amd_iommu (scripts/run-vm --amd-iommu --inject)"));
    }
    Ok(())
}

/// This program's own rig: the AMD-Vi tables, SEV-TIO firmware and TDISP it drives itself.
fn need_own_rig() -> R {
    inject_mode()?;
    if amdvi_mode() || viommu_mode() || vtd_mode() || tdx_mode() {
        return Err(format!("{SKIP}drives the AMD-Vi tables and SEV-TIO flow itself (scripts/run-vm --inject without a kernel IOMMU)"));
    }
    Ok(())
}

/// The daemon's control channel: one JSON command per line, one answer per line.
pub(super) struct Host(std::fs::File);

impl Host {
    pub(super) fn open() -> Result<Host, String> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open("/dev/ttyS2")
            .map_err(|e| format!("/dev/ttyS2 (the control channel): {e}"))?;
        let mut h = Host(f);
        // Whatever an earlier scenario left unread.
        let mut junk = [0u8; 256];
        while matches!(h.0.read(&mut junk), Ok(n) if n > 0) {}
        Ok(h)
    }

    fn call(&mut self, cmd: &str) -> Result<String, String> {
        self.0.write_all(format!("{cmd}\n").as_bytes()).map_err(|e| format!("control channel: {e}"))?;
        let start = Instant::now();
        let mut line = Vec::new();
        let mut b = [0u8; 512];
        while start.elapsed() < Duration::from_secs(10) {
            match self.0.read(&mut b) {
                Ok(n) if n > 0 => {
                    line.extend_from_slice(&b[..n]);
                    if let Some(end) = line.iter().position(|&c| c == b'\n') {
                        return Ok(String::from_utf8_lossy(&line[..end]).trim().to_string());
                    }
                }
                _ => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        Err(format!("no answer from the daemon to {cmd}"))
    }

    /// Arm a fault (the JSON members after "fault"); the daemon's answer.
    pub(super) fn inject(&mut self, fault: &str, rest: &str) -> Result<String, String> {
        let rest = if rest.is_empty() { String::new() } else { format!(",{rest}") };
        let a = self.call(&format!(r#"{{"cmd":"inject","fault":"{fault}"{rest}}}"#))?;
        check!(a.contains(r#""ok":true"#), "the daemon refused {fault}: {a}");
        println!("# injected {fault}: {a}");
        Ok(a)
    }

    /// Armed faults and the AMD-Vi registers (without the history of fired ones).
    pub(super) fn status(&mut self) -> Result<String, String> {
        self.call(r#"{"cmd":"status","fired":false}"#)
    }

    /// An AMD-Vi register from the status answer.
    fn reg(&mut self, name: &str) -> Result<u64, String> {
        let s = self.status()?;
        field(&s, name).and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok()).ok_or_else(|| format!("no {name} in {s}"))
    }
}

/// The value of the first `"key":` member of a JSON text (a number or a string's contents).
pub(super) fn field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let at = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &json[at..];
    Some(match rest.strip_prefix('"') {
        Some(s) => &s[..s.find('"')?],
        None => &rest[..rest.find([',', '}', ']']).unwrap_or(rest.len())],
    })
}

pub(super) fn dmesg() -> String {
    std::process::Command::new("dmesg").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

pub(super) fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// Poll the kernel log until `needle` appears more than `before` times (up to 10 s: Linux's
/// COMPLETION_WAIT timeout alone is 100000 udelay(1) calls, slow under TCG).
pub(super) fn logged(needle: &str, before: usize) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if count(&dmesg(), needle) > before {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

const TIMED_OUT: &str = "Completion-Wait loop timed out";
const RESTARTING: &str = "IOMMU Event log restarting";
/// Status register bits (amd_iommu_types.h MMIO_STATUS_*).
const EVT_OVERFLOW: u64 = 1 << 0;
const EVT_RUN: u64 = 1 << 3;
const CMD_RUN: u64 = 1 << 4;

/// The endpoint through VFIO type1 on Linux's amd_iommu (or intel_iommu): a ring page at VFIO_RING_IOVA and a data
/// page at DATA_IOVA, both mapped, and a FILL that landed (its translation is in the IOTLB).
pub(super) fn vfio() -> Result<(Vfio, UserMem), String> {
    bind_vfio_pci(&BDF)?;
    let v = Vfio::open(&BDF)?;
    let mem = UserMem::new(0x2000)?;
    v.map(mem.addr(), VFIO_RING_IOVA, 0x1000)?;
    v.map(mem.addr() + 0x1000, DATA_IOVA, 0x1000)?;
    Ok((v, mem))
}

/// The next COMPLETION_WAIT neither stores nor interrupts: Linux's wait_on_sem gives up after
/// LOOP_TIMEOUT, logs "Completion-Wait loop timed out" and returns -EIO, which the unmap path
/// ignores. The invalidation before it did run, and the next wait (a higher sequence number)
/// completes: DMA and unmap behave as before.
fn completion_wait_lost(_r: &mut Rig) -> R {
    need_amd_iommu()?;
    let mut host = Host::open()?;
    let (v, mem) = vfio()?;
    let mut ep = VfioRing::start(&v.device, &mem)?;
    fill_lands(&mut ep, &mem, 0x1000, DATA_IOVA, 0x1111)?;
    let before = count(&dmesg(), TIMED_OUT);
    host.inject("completion-wait-lost", "")?;
    let t = Instant::now();
    v.unmap(DATA_IOVA, 0x1000)?;
    let waited = t.elapsed().as_secs_f64();
    check!(logged(TIMED_OUT, before), "Linux logged no \"{TIMED_OUT}\"");
    println!("# the unmap returned after {waited:.2} s (Linux's COMPLETION_WAIT loop)");
    expect_dmesg(r"AMD-Vi: IOMMU 0000:00:03\.0: Completion-Wait loop timed out");
    expect_event(expect!(Injected { fault: "completion-wait-lost".into() }));
    check!(host.status()?.contains(r#""pending":[]"#), "the fault is still armed");
    // The INVALIDATE_IOMMU_PAGES before the lost wait ran: the unmapped IOVA faults.
    let st = ep.fill(DATA_IOVA, 0x2222)?;
    check!(st == DmaStatus::IoPageFault, "FILL after the unmap: status {st}");
    // Linux carries on: the next map, DMA, unmap and wait work, with no new timeout.
    v.map(mem.addr() + 0x1000, DATA_IOVA, 0x1000)?;
    fill_lands(&mut ep, &mem, 0x1000, DATA_IOVA, 0x3333)?;
    v.unmap(DATA_IOVA, 0x1000)?;
    check!(ep.fill(DATA_IOVA, 0x4444)? == DmaStatus::IoPageFault, "the second unmap did not reach the IOTLB");
    check!(count(&dmesg(), TIMED_OUT) == before + 1, "more than one timeout");
    Ok(())
}

/// Event log overflow: the IOMMU stops logging and interrupts; Linux's handler sees
/// EventOverflow, finds EventLogRun clear and restarts logging (amd_iommu_restart_event_logging:
/// "IOMMU Event log restarting"). The next fault is logged and Linux reads it.
fn event_log_overflow(_r: &mut Rig) -> R {
    need_amd_iommu()?;
    let mut host = Host::open()?;
    let (v, mem) = vfio()?;
    let mut ep = VfioRing::start(&v.device, &mem)?;
    let before = count(&dmesg(), RESTARTING);
    host.inject("event-log-overflow", "")?;
    check!(logged(RESTARTING, before), "Linux did not restart the event log");
    expect_dmesg(r"AMD-Vi: IOMMU Event log restarting");
    expect_event(expect!(Injected { fault: "event-log-overflow".into() }));
    let st = host.reg("status")?;
    check!(st & (EVT_RUN | EVT_OVERFLOW) == EVT_RUN, "Status {st:#x} after the restart: EventLogRun should be set, EventOverflow clear");
    // A real fault after the restart is logged and consumed.
    let tail = host.reg("evt_tail")?;
    let unmapped = DATA_IOVA + 0x10_0000;
    check!(ep.fill(unmapped, 0x5555)? == DmaStatus::IoPageFault, "FILL to an unmapped IOVA did not fault");
    check!(
        poll(|| host.reg("evt_tail").is_ok_and(|t| t != tail) && host.reg("evt_head") == host.reg("evt_tail")),
        "the fault was not logged, or Linux did not read it"
    );
    expect_dmesg(&format!(r"0000:00:04\.0: AMD-Vi: Event logged \[IO_PAGE_FAULT domain=0x[0-9a-f]+ address={unmapped:#x} flags=0x0020\]"));
    fill_lands(&mut ep, &mem, 0x1000, DATA_IOVA, 0x6666)
}

/// 600 spurious IO_PAGE_FAULT records at once: the log (Linux allocates 512 entries) fills and
/// overflows; Linux prints the first few (rate-limited), restarts the log, and DMA goes on.
fn io_page_fault_storm(_r: &mut Rig) -> R {
    need_amd_iommu()?;
    let mut host = Host::open()?;
    let (v, mem) = vfio()?;
    let mut ep = VfioRing::start(&v.device, &mem)?;
    let before = count(&dmesg(), RESTARTING);
    let storm = 0xdead_0000u64;
    let a = host.inject("io-page-fault", &format!(r#""device":"00:04.0","iova":"{storm:#x}","count":600"#))?;
    let written = field(&a, "logged").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    println!("# storm: {written} of 600 records written before the log overflowed");
    check!((500..600).contains(&written), "{written} records written: the log should have held about 511");
    check!(logged(RESTARTING, before), "Linux did not restart the event log after the storm");
    check!(
        poll(|| host.reg("status").is_ok_and(|st| st & (EVT_RUN | EVT_OVERFLOW) == EVT_RUN) && host.reg("evt_head") == host.reg("evt_tail")),
        "the log is not running and drained after the storm"
    );
    let shown = count(&dmesg(), &format!("address={storm:#x}"));
    println!("# Linux printed {shown} of the {written} IO_PAGE_FAULT records (rate-limited)");
    expect_dmesg(&format!(r"AMD-Vi: Event logged \[IO_PAGE_FAULT domain=0x[0-9a-f]+ address={storm:#x} flags=0x0020\]"));
    expect_event(expect!(Injected { fault: "io-page-fault".into() }));
    fill_lands(&mut ep, &mem, 0x1000, DATA_IOVA, 0x7777)
}

/// The next command's fetch fails (COMMAND_HARDWARE_ERROR), or it is reported illegal
/// (ILLEGAL_COMMAND_ERROR): either way the command processor stops with head on it. Linux logs
/// the event, its COMPLETION_WAITs time out from then on, and it has no code that restarts the
/// processor (amd_iommu_reset_cmd_buffer runs only at enable and resume): the unmap's
/// invalidation never runs, so the device still reaches the unmapped page through the IOTLB.
/// This program then plays the missing recovery (CmdBufEn 0 -> 1 through BAR0): the queued
/// commands run, the unmapped IOVA faults, Linux's next waits complete. Then the same with an
/// illegal command.
fn command_hardware_error(_r: &mut Rig) -> R {
    need_amd_iommu()?;
    let mut host = Host::open()?;
    let (v, mem) = vfio()?;
    let mut ep = VfioRing::start(&v.device, &mem)?;
    for (fault, event, line) in [
        (
            "command-hardware-error",
            "COMMAND_HARDWARE_ERROR",
            r"AMD-Vi: Event logged \[COMMAND_HARDWARE_ERROR address=0x[0-9a-f]+ flags=0x0600\]",
        ),
        ("illegal-command", "ILLEGAL_COMMAND_ERROR", r"AMD-Vi: Event logged \[ILLEGAL_COMMAND_ERROR address=0x[0-9a-f]+\]"),
    ] {
        fill_lands(&mut ep, &mem, 0x1000, DATA_IOVA, 0x8888)?;
        let log = dmesg();
        let (timeouts, errors) = (count(&log, TIMED_OUT), count(&log, event));
        host.inject(fault, "")?;
        v.unmap(DATA_IOVA, 0x1000)?;
        check!(logged(event, errors), "Linux logged no {event}");
        check!(logged(TIMED_OUT, timeouts), "Linux's COMPLETION_WAIT did not time out after {event}");
        expect_dmesg(line);
        expect_event(expect!(Injected { fault: fault.into() }));
        check!(host.reg("status")? & CMD_RUN == 0, "CmdBufRun still set");
        // The stale translation: the invalidation never ran.
        let st = ep.fill(DATA_IOVA, 0x9999)?;
        println!("# {event}: after the unmap with the command processor stopped, FILL status {st} (1: the IOTLB still maps the page)");
        check!(st == DmaStatus::Ok && holds(&mem, 0x1000, 0x9999), "the stale IOTLB entry should still let the FILL land (status {st})");
        // The recovery Linux 7.3 lacks, through BAR0's sysfs resource file: a kernel built with
        // CONFIG_IO_STRICT_DEVMEM (the distribution's) refuses to map a range a driver claimed.
        let dev = find_function(abi::pci::SECURE_IOMMU)?;
        let regs = match Bar::map(&dev, 0) {
            Ok(b) => b,
            Err(e) if e.contains("Invalid argument") => {
                println!("# the command processor stays stopped: this kernel will not map amd_iommu's registers for the recovery ({e}; CONFIG_IO_STRICT_DEVMEM); run-vm --test-kernel shows it");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let ctl = regs.r64(mmio::CONTROL as usize);
        regs.w64(mmio::CONTROL as usize, ctl & !control::CMD_BUF_EN);
        regs.w64(mmio::CONTROL as usize, ctl);
        check!(
            poll(|| host.reg("status").is_ok_and(|s| s & CMD_RUN != 0) && host.reg("cmd_head") == host.reg("cmd_tail")),
            "the command processor did not resume and drain"
        );
        let st = ep.fill(DATA_IOVA, 0xaaaa)?;
        check!(st == DmaStatus::IoPageFault, "after the restart the unmap's invalidation should have run (status {st})");
        // And Linux's next commands complete.
        let timeouts = count(&dmesg(), TIMED_OUT);
        v.map(mem.addr() + 0x1000, DATA_IOVA, 0x1000)?;
        fill_lands(&mut ep, &mem, 0x1000, DATA_IOVA, 0xbbbb)?;
        v.unmap(DATA_IOVA, 0x1000)?;
        check!(count(&dmesg(), TIMED_OUT) == timeouts, "Linux's COMPLETION_WAIT still times out after the restart");
        v.map(mem.addr() + 0x1000, DATA_IOVA, 0x1000)?;
    }
    Ok(())
}

/// Hardware errors reading the device table, the page tables and the RMP at one request each:
/// the request is aborted (IO_PAGE_FAULT or HW_ERROR in the descriptor), Linux decodes each
/// record, and the next request is fine.
fn table_hardware_errors(r: &mut Rig) -> R {
    need_amd_iommu()?;
    let mut host = Host::open()?;
    let (v, mem) = vfio()?;
    let mut ep = VfioRing::start(&v.device, &mem)?;
    r.ctl.w64(mb::reg::SNP_CTL as usize, SnpCtl::SNP_EN.bits());
    for (fault, st_want, line) in [
        (
            "dev-tab-hardware-error",
            DmaStatus::IoPageFault,
            r"AMD-Vi: Event logged \[DEV_TAB_HARDWARE_ERROR device=0000:00:04\.0 address=0x[0-9a-f]+ flags=0x0620\]",
        ),
        (
            "page-tab-hardware-error",
            DmaStatus::IoPageFault,
            r"AMD-Vi: Event logged \[PAGE_TAB_HARDWARE_ERROR device=0000:00:04\.0 pasid=0x[0-9a-f]+ address=0x[0-9a-f]+ flags=0x0620\]",
        ),
        (
            "rmp-hw-error",
            DmaStatus::HwError,
            r"0000:00:04\.0: AMD-Vi: Event logged \[RMP_HW_ERROR vmg_tag=0x0000, spa=0x[0-9a-f]+, flags=0x0620\]",
        ),
    ] {
        // At the FILL's data page, not its descriptor fetch.
        host.inject(fault, &format!(r#""iova":"{DATA_IOVA:#x}""#))?;
        let st = ep.fill(DATA_IOVA, 0x1234)?;
        check!(st == st_want, "{fault}: FILL status {st}");
        expect_dmesg(line);
        expect_event(expect!(Injected { fault: fault.into() }));
        fill_lands(&mut ep, &mem, 0x1000, DATA_IOVA, 0x4321)?;
    }
    Ok(())
}

/// The TIO flow from wherever the earlier scenarios left it to a TDI bound to ASID 2 in RUN with
/// vTOM set; its id.
fn bind_and_run(r: &mut Rig) -> Result<u32, String> {
    let rid = r.rid;
    // Already done by the TDISP scenarios, or not: either answer is fine here.
    r.mailbox(Mb::TioInit, &[])?;
    r.mailbox(Mb::TioDevCreate, mb::TioDev { device_id: U16::new(rid), arg: 0 }.as_bytes())?;
    r.mailbox(Mb::TioDevConnect, mb::TioDevConnect { device_id: U16::new(rid), ..Default::default() }.as_bytes())?;
    let create = mb::TioTdiCreate { device_id: U16::new(rid), function_id: U32::new(rid.into()), ..Default::default() };
    r.mailbox(Mb::TioTdiCreate, create.as_bytes())?;
    let tdi_cmd = |tdi: u32, force: u8| mb::TioTdi { tdi: U32::new(tdi), force, ..Default::default() };
    let tdi = (1..=16u32)
        .find(|&t| r.mailbox(Mb::TioTdiStatus, tdi_cmd(t, 0).as_bytes()).is_ok_and(|s| s == 0))
        .ok_or("no TDI for the endpoint")?;
    r.mailbox(Mb::TioTdiUnbind, tdi_cmd(tdi, 1).as_bytes())?;
    // ASID 2, guest BDF 01:00.0, no lock flags, and RUN.
    let bind = mb::TioTdiBind { tdi: U32::new(tdi), asid: U16::new(2), guest_device_id: U16::new(0x0100), lock_flags: U16::new(0), run: 1 };
    check!(r.mailbox(Mb::TioTdiBind, bind.as_bytes())? == 0, "TIO_TDI_BIND");
    let sdte = mb::TioGuestRequest {
        tdi: U32::new(tdi),
        message: U32::new(GuestMessage::SdteWrite.code()),
        vtom: U64::new(VTOM),
        ..Default::default()
    };
    check!(r.mailbox(Mb::TioGuestRequest, sdte.as_bytes())? == 0, "SDTE_WRITE");
    r.mailbox(Mb::TioAsidFenceClear, mb::TioAsidFence { asid: U16::new(2), ..Default::default() }.as_bytes())?;
    check!(r.tdi_state()? == TdiState::Run, "the TDI is not in RUN after the bind");
    Ok(tdi)
}

/// The device moves its TDI to ERROR in the middle of a four-page T=1 FILL (after the descriptor
/// fetch and two pages): the FILL is refused and moves nothing, T=1 DMA stays refused while T=0
/// goes on, and only the host's STOP_INTERFACE and a fresh bind bring T=1 DMA back.
fn tdi_error(r: &mut Rig) -> R {
    need_own_rig()?;
    let mut host = Host::open()?;
    r.ctl.w64(mb::reg::SNP_CTL as usize, SnpCtl::SNP_EN.bits());
    let (iova, _) = r.small(12);
    let pages: Vec<u64> = (12..16).map(|k| r.small(k).1).collect();
    for (i, &pa) in pages.iter().enumerate() {
        let at = iova + i as u64 * 0x1000;
        r.map(at, pa, 12, Perm::RW)?;
        check!(r.rmpupdate(pa, at, true, 2)? == 0 && r.pvalidate(pa, at, 2)? == 0, "page {i} for ASID 2");
    }
    let tdi = bind_and_run(r)?;
    check!(r.fill(DescFlags::T, iova, 0x4000, 0x1212)? == DmaStatus::Ok, "T=1 FILL in RUN");
    // Counted from now: the descriptor fetch and the first two pages pass.
    host.inject("tdi-error", r#""device":"00:04.0","after_dma":3"#)?;
    let st = r.fill(DescFlags::T, iova, 0x4000, 0x3434)?;
    check!(st == DmaStatus::T1Refused, "T=1 FILL when the TDI went to ERROR mid-transfer: status {st}");
    check!(pages.iter().all(|&pa| r.mem.r64(pa) == 0x1212), "the refused FILL moved bytes");
    check!(r.tdi_state()? == TdiState::Error, "the device's DOE does not say ERROR");
    check!(r.mailbox(Mb::TioTdiStatus, &tdi.to_le_bytes())? == 0 && r.page_bytes(r.mbox + 8, 1)[0] == 3, "the firmware does not see ERROR");
    expect_event(expect!(Tdisp { to: "ERROR".into(), via: "injected".into() }));
    expect_event(expect!(Injected { fault: "tdi-error".into() }));
    check!(r.fill(DescFlags::T, iova, 64, 0x5656)? == DmaStatus::T1Refused, "T=1 DMA in ERROR");
    let (shared, shared_pa) = r.small(16);
    r.map(shared, shared_pa, 12, Perm::RW)?;
    check!(r.fill(DescFlags::empty(), shared, 64, 0x7878)? == DmaStatus::Ok && r.mem.r64(shared_pa) == 0x7878, "T=0 DMA goes on");
    // The host STOPs the TDI; still no T=1 until it is bound and RUN again.
    let stop = r.tdisp(tdisp::req::STOP_INTERFACE, &[])?;
    check!(stop == Response::Stopped && r.tdi_state()? == TdiState::ConfigUnlocked, "STOP_INTERFACE from ERROR: {stop:?}");
    check!(r.fill(DescFlags::T, iova, 64, 0x5656)? == DmaStatus::T1Refused, "T=1 DMA after STOP, before a bind");
    bind_and_run(r)?;
    check!(r.fill(DescFlags::T, iova, 0x4000, 0x9a9a)? == DmaStatus::Ok, "T=1 FILL after a clean re-bind");
    check!(pages.iter().all(|&pa| r.mem.r64(pa) == 0x9a9a), "the FILL after the re-bind did not land");
    Ok(())
}

/// The RMP check of one chosen request cannot read its RMP entry: RMP_HW_ERROR in the event log
/// with the page's address, the descriptor fails with HW_ERROR (7), the next one is fine.
fn rmp_hw_error(r: &mut Rig) -> R {
    need_own_rig()?;
    let mut host = Host::open()?;
    r.ctl.w64(mb::reg::SNP_CTL as usize, SnpCtl::SNP_EN.bits());
    let (iova, pa) = r.small(17);
    r.map(iova, pa, 12, Perm::RW)?;
    r.events();
    host.inject("rmp-hw-error", &format!(r#""iova":"{iova:#x}""#))?;
    let st = r.fill(DescFlags::empty(), iova, 64, 0x1111)?;
    check!(st == DmaStatus::HwError, "FILL with an unreadable RMP entry: status {st}");
    check!(r.mem.r64(pa) == 0, "bytes moved");
    let ev = r.events();
    check!(ev.iter().any(|e| e.code == event::RMP_HW_ERROR && e.address == pa && e.devid == r.rid), "no RMP_HW_ERROR for {pa:#x}: {ev:?}");
    expect_event(expect!(Injected { fault: "rmp-hw-error".into(), address: Some(pa) }));
    check!(r.fill(DescFlags::empty(), iova, 64, 0x2222)? == DmaStatus::Ok && r.mem.r64(pa) == 0x2222, "the next FILL");
    Ok(())
}

/// The device DMAs on its own: to a mapped page the bytes land; to an unmapped IOVA the IOMMU
/// refuses it and logs IO_PAGE_FAULT, as for any request of the device.
fn rogue_dma(r: &mut Rig) -> R {
    need_own_rig()?;
    let mut host = Host::open()?;
    let (iova, pa) = r.small(18);
    r.map(iova, pa, 12, Perm::RW)?;
    r.events();
    host.inject("endpoint-dma", &format!(r#""device":"00:04.0","iova":"{iova:#x}","len":64"#))?;
    check!(poll(|| r.mem.r64(pa + 56) == 0x5a5a_5a5a_5a5a_5a5a), "the rogue write did not land");
    let bad = 0x3100_0000u64;
    host.inject("endpoint-dma", &format!(r#""device":"00:04.0","iova":"{bad:#x}""#))?;
    let mut ev = Vec::new();
    check!(
        poll(|| {
            ev.extend(r.events());
            ev.iter().any(|e| e.code == event::IO_PAGE_FAULT && e.address == bad)
        }),
        "no IO_PAGE_FAULT for the rogue DMA: {ev:?}"
    );
    expect_event(expect!(Dma { injected: Some(true), iova: Some(bad), status: DmaStatus::IoPageFault.into() }));
    Ok(())
}

/// The ring stops making progress: the doorbell is taken, HEAD stays, BUSY stays set; the
/// driver's CTRL.RESET recovers the engine.
fn ring_stall(r: &mut Rig) -> R {
    need_own_rig()?;
    let mut host = Host::open()?;
    let (iova, pa) = r.small(19);
    r.map(iova, pa, 12, Perm::RW)?;
    host.inject("ring-stall", r#""device":"00:04.0""#)?;
    let slot = r.next_slot();
    r.mem.wr(slot, &descriptor(Op::Fill, DescFlags::empty(), 8, 0, iova, 0x4242));
    r.ep.w32(reg::TAIL as usize, (r.tail + 1) % RING_ENTRIES);
    std::thread::sleep(Duration::from_millis(300));
    let (status, written) = (Status::from_bits_truncate(r.ep.r32(reg::STATUS as usize)), r.mem.r64(pa));
    let pending = r.page_bytes(slot + abi::endpoint::DESC_STATUS, 2) == DmaStatus::Pending.code().to_le_bytes();
    check!(status.contains(Status::BUSY) && written == 0 && pending, "a stalled ring made progress (STATUS {status:?})");
    // Recovery as a driver would: reset the engine and start the ring over.
    r.ep.w32(reg::CTRL as usize, Ctrl::RESET.bits());
    r.tail = 0;
    check!(r.ep.r32(reg::STATUS as usize) == 0, "STATUS after CTRL.RESET");
    check!(r.fill(DescFlags::empty(), iova, 8, 0x4343)? == DmaStatus::Ok && r.mem.r64(pa) == 0x4343, "DMA after the reset");
    expect_event(expect!(Injected { fault: "ring-stall".into() }));
    Ok(())
}

/// A DOE requester as Linux's drivers/pci/doe.c is: Busy and Error checked before sending, Data
/// Object Ready polled with a timeout (here 2000 reads), the response read dword by dword.
fn doe_exchange(cfg: &Config, cap: u64, vendor: u16, ty: u8, payload: &[u8]) -> Result<Vec<u8>, &'static str> {
    let status = || DoeStatus::from_bits_truncate(cfg.r32(cap + u64::from(doe_reg::STATUS)));
    let (write, read) = (cap + u64::from(doe_reg::WRITE), cap + u64::from(doe_reg::READ));
    if status().contains(DoeStatus::BUSY) {
        return Err("busy");
    }
    if status().contains(DoeStatus::ERROR) {
        return Err("error");
    }
    let words: Vec<u32> = payload.chunks(4).map(|c| c.iter().rev().fold(0, |a, &b| a << 8 | u32::from(b))).collect();
    cfg.w32(write, abi::doe::header(vendor, ty));
    cfg.w32(write, words.len() as u32 + 2);
    words.iter().for_each(|&w| cfg.w32(write, w));
    cfg.w32(cap + u64::from(doe_reg::CTRL), DoeCtrl::GO.bits());
    if !(0..2000).any(|_| status().intersects(DoeStatus::DATA_OBJECT_READY | DoeStatus::ERROR)) {
        return Err("timeout");
    }
    let mut out = Vec::new();
    while status().contains(DoeStatus::DATA_OBJECT_READY) && out.len() < abi::doe::MAX_DWORDS {
        out.push(cfg.r32(read));
        cfg.w32(read, 0);
    }
    if status().contains(DoeStatus::ERROR) || out.len() < 2 {
        return Err("error");
    }
    Ok(out[2..].iter().flat_map(|w| w.to_le_bytes()).collect())
}

/// pci_doe_abort: Abort, then neither Error nor Busy.
fn doe_abort(cfg: &Config, cap: u64) -> bool {
    cfg.w32(cap + u64::from(doe_reg::CTRL), DoeCtrl::ABORT.bits());
    (0..100)
        .any(|_| !DoeStatus::from_bits_truncate(cfg.r32(cap + u64::from(doe_reg::STATUS))).intersects(DoeStatus::ERROR | DoeStatus::BUSY))
}

/// The mailbox busy, in error, and hung: what Linux's DOE requester meets, and its recovery.
fn doe_faults(r: &mut Rig) -> R {
    need_own_rig()?;
    let mut host = Host::open()?;
    let cap = r.doe.ok_or("no DOE capability")?;
    let state = |r: &Rig| {
        let m = tdisp::request(tdisp::req::GET_DEVICE_INTERFACE_STATE, u32::from(r.rid), &[]);
        doe_exchange(&r.ep_cfg, cap, abi::doe::TDISP_VENDOR, abi::doe::TDISP_TYPE, &m)
    };
    check!(doe_abort(&r.ep_cfg, cap) && state(r).is_ok(), "the mailbox before any fault");
    host.inject("doe-busy", r#""device":"00:04.0","reads":3"#)?;
    check!(state(r) == Err("busy"), "Busy not seen");
    // Linux polls Busy for up to a second before giving up; the reads run the Busy out.
    check!(
        poll(|| !DoeStatus::from_bits_truncate(r.ep_cfg.r32(cap + u64::from(doe_reg::STATUS))).contains(DoeStatus::BUSY)),
        "Busy never cleared"
    );
    check!(state(r).is_ok(), "an exchange after Busy cleared");
    host.inject("doe-error", r#""device":"00:04.0""#)?;
    check!(state(r) == Err("error"), "DOE Error not seen");
    check!(doe_abort(&r.ep_cfg, cap) && state(r).is_ok(), "Abort did not clear DOE Error");
    host.inject("doe-needs-abort", r#""device":"00:04.0""#)?;
    check!(state(r) == Err("timeout"), "the hung mailbox answered");
    check!(state(r) == Err("timeout"), "still hung before the abort");
    check!(doe_abort(&r.ep_cfg, cap), "pci_doe_abort failed");
    let s = state(r).map_err(|e| format!("after the abort: {e}"))?;
    check!(matches!(tdisp::parse_response(&s), Some(Response::State(_))), "DEVICE_INTERFACE_STATE after the abort: {s:02x?}");
    expect_event(expect!(Injected { fault: "doe-needs-abort".into() }));
    Ok(())
}
