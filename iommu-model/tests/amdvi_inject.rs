//! Faults injected into the AMD-Vi unit: each in its architectural form (the event the spec
//! logs, the status bits it changes), at the point and time its trigger says.

use iommu_model::amdvi::command::{encode, Command};
use iommu_model::amdvi::dte::Dte;
use iommu_model::amdvi::event::{self, flags, Event};
use iommu_model::amdvi::inject::Fault;
use iommu_model::amdvi::mmio::{self, control, status, AmdVi};
use iommu_model::amdvi::Outcome;
use iommu_model::fmt::amdv1::{pde, pte};
use iommu_model::inject::{Chance, When};
use iommu_model::mem::{ByteMem, PhysMem};
use iommu_model::walk::{Access, Perm};

const DEVTAB: u64 = 0x1_0000;
const CMDBUF: u64 = 0x2_0000;
const EVTLOG: u64 = 0x3_0000;
const SEM: u64 = 0x4_0000;
const DEVID: u16 = 0x0020;
const DOMAIN: u16 = 9;

/// An enabled unit (256-entry command buffer and event log, every interrupt on) and Mode 3
/// tables mapping IOVA 0x5000 to 0x40_0000 for DEVID.
fn rig() -> (AmdVi, ByteMem) {
    let mut m = ByteMem::new(0, 0x80_0000);
    m.write_u64(0x10_0000, pde(0x10_1000, 2, Perm::RW)).unwrap();
    m.write_u64(0x10_1000, pde(0x10_2000, 1, Perm::RW)).unwrap();
    m.write_u64(0x10_2000 + 5 * 8, pte(0x40_0000, Perm::RW)).unwrap();
    m.write(DEVTAB + u64::from(DEVID) * 32, &Dte::translated(0x10_0000, 3, DOMAIN, Perm::RW).to_bytes()).unwrap();
    let mut vi = AmdVi::new();
    vi.mmio_write(&mut m, mmio::DEV_TABLE_BASE, 8, DEVTAB | 1);
    vi.mmio_write(&mut m, mmio::CMD_BUF_BASE, 8, CMDBUF | 8 << 56);
    vi.mmio_write(&mut m, mmio::EVENT_LOG_BASE, 8, EVTLOG | 8 << 56);
    let ctl = control::IOMMU_EN | control::EVENT_LOG_EN | control::EVENT_INT_EN | control::CMD_BUF_EN | control::COM_WAIT_INT_EN;
    vi.mmio_write(&mut m, mmio::CONTROL, 8, ctl);
    (vi, m)
}

fn submit(vi: &mut AmdVi, m: &mut ByteMem, cmds: &[Command]) {
    let mut tail = vi.mmio_read(mmio::CMD_BUF_TAIL, 8);
    for c in cmds {
        let [a, b] = encode(c);
        m.write_u64(CMDBUF + tail, a).unwrap();
        m.write_u64(CMDBUF + tail + 8, b).unwrap();
        tail = (tail + 16) % 4096;
    }
    vi.mmio_write(m, mmio::CMD_BUF_TAIL, 8, tail);
}

fn cw(data: u64) -> Command {
    Command::CompletionWait { store: true, interrupt: true, store_addr: SEM, data }
}

/// Event-log records between `from` and the tail.
fn records(vi: &AmdVi, m: &ByteMem, from: u64) -> Vec<Event> {
    let tail = vi.mmio_read(mmio::EVENT_LOG_TAIL, 8);
    let mut out = Vec::new();
    let mut at = from;
    while at != tail {
        let mut b = [0u8; 16];
        m.read(EVTLOG + at, &mut b).unwrap();
        out.push(Event::from_bytes(&b));
        at = (at + 16) % 4096;
    }
    out
}

fn st(vi: &AmdVi) -> u64 {
    vi.mmio_read(mmio::STATUS, 8)
}

#[test]
fn event_log_overflow_stops_logging_until_linux_restarts_it() {
    let (mut vi, mut m) = rig();
    vi.arm(&mut m, 1, Fault::EventLogOverflow, When::now()).unwrap();
    assert_eq!(st(&vi) & (status::EVENT_OVERFLOW | status::EVENT_LOG_RUN), status::EVENT_OVERFLOW);
    assert!(vi.take_irq(), "EventIntEn: the overflow interrupts");
    let fired = vi.take_fired();
    assert_eq!((fired.len(), fired[0].id, fired[0].fault), (1, 1, Fault::EventLogOverflow));
    // Nothing is logged while stopped.
    assert!(vi.translate(&mut m, DEVID, 0x9000, Access::Read).result().is_err());
    assert_eq!(vi.mmio_read(mmio::EVENT_LOG_TAIL, 8), 0);
    // amd_iommu_restart_log: log and interrupt off, EventOverflow cleared, both on.
    let ctl = vi.mmio_read(mmio::CONTROL, 8);
    vi.mmio_write(&mut m, mmio::CONTROL, 8, ctl & !(control::EVENT_LOG_EN | control::EVENT_INT_EN));
    vi.mmio_write(&mut m, mmio::STATUS, 4, status::EVENT_OVERFLOW);
    vi.mmio_write(&mut m, mmio::CONTROL, 8, ctl);
    vi.translate(&mut m, DEVID, 0x9000, Access::Read);
    assert_eq!(records(&vi, &m, 0).iter().map(|e| e.address).collect::<Vec<_>>(), [0x9000], "logging again");
    // With the log stopped already there is nothing to overflow.
    vi.mmio_write(&mut m, mmio::CONTROL, 8, ctl & !control::EVENT_LOG_EN);
    vi.arm(&mut m, 2, Fault::EventLogOverflow, When::now()).unwrap();
    assert_eq!(st(&vi) & status::EVENT_OVERFLOW, 0);
    assert!(vi.take_fired()[0].effect.contains("not running"));
}

#[test]
fn illegal_command_and_command_hardware_error_stop_the_processor_at_the_next_command() {
    for (fault, code, fl) in [
        (Fault::IllegalCommand, event::ILLEGAL_COMMAND_ERROR, 0),
        (Fault::CommandHardwareError, event::COMMAND_HARDWARE_ERROR, flags::TYPE_DATA_ERROR),
    ] {
        let (mut vi, mut m) = rig();
        // After two commands: the third (at offset 32) fails.
        vi.arm(&mut m, 5, fault, When { after_commands: 2, ..When::now() }).unwrap();
        assert!(vi.take_fired().is_empty(), "not yet");
        submit(&mut vi, &mut m, &[cw(1), Command::InvalidateIommuAll, cw(3), cw(4)]);
        assert_eq!(m.read_u64(SEM).unwrap(), 1, "the commands before it ran");
        assert_eq!(vi.mmio_read(mmio::CMD_BUF_HEAD, 8), 32, "head stays on the failed command");
        assert_eq!(st(&vi) & status::CMD_BUF_RUN, 0, "{fault:?} stops the processor");
        let recs = records(&vi, &m, 0);
        assert_eq!(recs.len(), 1);
        assert_eq!((recs[0].code, recs[0].address, recs[0].flags), (code, CMDBUF + 32, fl));
        let fired = vi.take_fired();
        assert_eq!((fired[0].id, fired[0].event, fired[0].logged), (5, Some(recs[0]), 1));
        // Toggling CmdBufEn resumes from head: the command itself was fine.
        let ctl = vi.mmio_read(mmio::CONTROL, 8);
        vi.mmio_write(&mut m, mmio::CONTROL, 8, ctl & !control::CMD_BUF_EN);
        vi.mmio_write(&mut m, mmio::CONTROL, 8, ctl);
        assert_eq!(m.read_u64(SEM).unwrap(), 4, "the rest ran");
        assert!(vi.inject.is_empty(), "fired once");
    }
}

#[test]
fn a_lost_completion_wait_neither_stores_nor_interrupts_and_the_next_one_does() {
    let (mut vi, mut m) = rig();
    vi.arm(&mut m, 3, Fault::CompletionWaitLost, When::now()).unwrap();
    // Not an invalidation: the next COMPLETION_WAIT.
    submit(&mut vi, &mut m, &[Command::InvalidateIommuAll]);
    assert!(!vi.inject.is_empty());
    vi.take_irq();
    vi.mmio_write(&mut m, mmio::STATUS, 4, status::COM_WAIT_INT);
    submit(&mut vi, &mut m, &[cw(7)]);
    assert_eq!(m.read_u64(SEM).unwrap(), 0, "no store");
    assert_eq!(st(&vi) & status::COM_WAIT_INT, 0, "no ComWaitInt");
    assert!(!vi.take_irq(), "no interrupt");
    assert_ne!(st(&vi) & status::CMD_BUF_RUN, 0, "the processor goes on");
    assert_eq!(vi.mmio_read(mmio::CMD_BUF_HEAD, 8), 32);
    submit(&mut vi, &mut m, &[cw(8)]);
    assert_eq!(m.read_u64(SEM).unwrap(), 8, "Linux's next wait (a higher sequence number) completes");
    assert_eq!(vi.take_fired()[0].fault, Fault::CompletionWaitLost);
    assert_eq!(vi.commands[1], 2, "both counted as executed");
}

#[test]
fn dev_tab_hardware_error_on_the_next_request_even_with_the_dte_cached() {
    let (mut vi, mut m) = rig();
    assert!(vi.translate(&mut m, DEVID, 0x5000, Access::Write).translation().is_some(), "DTE cached");
    vi.arm(&mut m, 4, Fault::DevTabHardwareError, When::now()).unwrap();
    match vi.translate(&mut m, DEVID, 0x5000, Access::Write) {
        Outcome::Fault { event, logged: true, .. } => {
            assert_eq!(event, Event::dev_tab_hw_error(DEVID, flags::RW | flags::TYPE_DATA_ERROR, DEVTAB + u64::from(DEVID) * 32));
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(records(&vi, &m, 0)[0].name(), "DEV_TAB_HARDWARE_ERROR");
    assert_eq!(vi.translate(&mut m, DEVID, 0x5000, Access::Write).translation().map(|t| t.spa), Some(0x40_0000), "once");
}

#[test]
fn page_tab_hardware_error_only_at_a_walk_of_the_chosen_device_and_iova() {
    let (mut vi, mut m) = rig();
    // A pass-through device: no table is read, so it does not fire there.
    m.write(DEVTAB + 0x18 * 32, &Dte::translated(0, 0, 2, Perm::RW).to_bytes()).unwrap();
    vi.translate(&mut m, DEVID, 0x5000, Access::Read);
    let when = When { iova: Some(0x5000), ..When::now() };
    vi.arm(&mut m, 6, Fault::PageTabHardwareError, when).unwrap();
    assert!(vi.translate(&mut m, 0x18, 0x5000, Access::Read).translation().is_some(), "pass-through: nothing read");
    assert!(vi.translate(&mut m, DEVID, 0x6000, Access::Read).result().is_err_and(|e| e.code == event::IO_PAGE_FAULT), "another IOVA");
    match vi.translate(&mut m, DEVID, 0x5000, Access::Read) {
        Outcome::Fault { event, level, .. } => {
            // Mode 3: the top-level entry for IOVA 0x5000 is entry 0 of the root table.
            assert_eq!(event, Event::page_tab_hw_error(DEVID, DOMAIN, flags::TYPE_DATA_ERROR, 0x10_0000));
            assert_eq!(level, Some(3));
        }
        o => panic!("{o:?}"),
    }
    let walks = vi.walks;
    let (o, walked) = vi.translate_walked(&mut m, DEVID, 0x5000, Access::Read);
    assert!(o.translation().is_some() && walked, "the cached translation was dropped: walked again");
    assert_eq!(vi.walks, walks + 1);
    let (o, walked) = vi.translate_walked(&mut m, DEVID, 0x5000, Access::Read);
    assert!(o.translation().is_some() && !walked, "then an IOTLB hit");
}

#[test]
fn a_spurious_io_page_fault_storm_fills_the_log_and_overflows_it() {
    let (mut vi, mut m) = rig();
    vi.arm(&mut m, 8, Fault::IoPageFault { devid: DEVID, iova: 0xdead_0000, count: 3 }, When::now()).unwrap();
    let recs = records(&vi, &m, 0);
    assert_eq!(recs, vec![Event::io_page_fault(DEVID, DOMAIN, flags::RW, 0xdead_0000); 3], "the DTE's DomainID, a write");
    assert_eq!(st(&vi) & status::EVENT_OVERFLOW, 0);
    vi.mmio_write(&mut m, mmio::EVENT_LOG_HEAD, 8, 48);
    // 300 into a 256-entry log: 255 fit (one slot tells full from empty), then overflow.
    vi.arm(&mut m, 9, Fault::IoPageFault { devid: DEVID, iova: 0x1000, count: 300 }, When::now()).unwrap();
    let fired = vi.take_fired();
    assert_eq!((fired[1].id, fired[1].logged), (9, 255));
    assert!(fired[1].effect.contains("overflowed"), "{}", fired[1].effect);
    assert_eq!(st(&vi) & (status::EVENT_OVERFLOW | status::EVENT_LOG_RUN), status::EVENT_OVERFLOW);
}

#[test]
fn after_n_dma_requests_and_a_seeded_probability() {
    let (mut vi, mut m) = rig();
    vi.arm(&mut m, 1, Fault::IoPageFault { devid: DEVID, iova: 0x7000, count: 1 }, When { after_dma: 3, ..When::now() }).unwrap();
    for n in 0..3 {
        vi.translate(&mut m, DEVID, 0x5000, Access::Read);
        assert!(vi.take_fired().is_empty(), "request {n}");
    }
    vi.translate(&mut m, DEVID, 0x5000, Access::Read);
    assert_eq!(vi.take_fired()[0].id, 1, "at the fourth request");
    // One command fetch in four fails, reproducibly (a resumed processor fetches the failed
    // command again, and it may fail again).
    let run = |seed| {
        let (mut vi, mut m) = rig();
        let when = When { times: 0, chance: Some(Chance { per_million: 250_000, seed }), ..When::now() };
        vi.arm(&mut m, 2, Fault::IllegalCommand, when).unwrap();
        let mut stops = Vec::new();
        for i in 0..200u64 {
            submit(&mut vi, &mut m, &[cw(i + 1)]);
            if st(&vi) & status::CMD_BUF_RUN == 0 {
                stops.push(i);
                let ctl = vi.mmio_read(mmio::CONTROL, 8);
                vi.mmio_write(&mut m, mmio::CONTROL, 8, ctl & !control::CMD_BUF_EN);
                vi.mmio_write(&mut m, mmio::CONTROL, 8, ctl);
            }
        }
        stops
    };
    let (a, b) = (run(5), run(5));
    assert_eq!(a, b, "the same seed stops at the same commands");
    assert_ne!(a, run(6), "another seed, other commands");
    assert!((40..110).contains(&a.len()), "{} stops in 200", a.len());
}

#[test]
fn armed_faults_survive_a_function_reset() {
    let (mut vi, mut m) = rig();
    vi.arm(&mut m, 1, Fault::IllegalCommand, When::now()).unwrap();
    vi.reset();
    assert_eq!(vi.inject.pending().len(), 1);
}
