//! AMD-Vi translation rules, one test per rule, on hand-made tables (spec 48882 §2.2).

use iommu_model::amdvi::command::{encode, Command};
use iommu_model::amdvi::dte::{DevTabBase, Dte};
use iommu_model::amdvi::event::{self, flags, Event};
use iommu_model::amdvi::mmio::{self, control, status, AmdVi};
use iommu_model::amdvi::{translate, Outcome};
use iommu_model::fmt::amdv1::{pde, pte, sized_pte};
use iommu_model::mem::{ByteMem, PhysMem};
use iommu_model::walk::{Access, Perm};

const DEVTAB: u64 = 0x1_0000;
const DEVID: u16 = 0x0020; // 00:04.0

fn mem() -> ByteMem {
    ByteMem::new(0, 0x80_0000)
}

fn set_dte(m: &mut ByteMem, devid: u16, d: Dte) {
    m.write(DEVTAB + u64::from(devid) * 32, &d.to_bytes()).unwrap();
}

fn run(m: &ByteMem, iova: u64, access: Access) -> Outcome {
    translate(m, DevTabBase(DEVTAB | 1), DEVID, iova, access)
}

fn spa(o: Outcome) -> u64 {
    o.translation().unwrap_or_else(|| panic!("expected a translation, got {o:?}")).spa
}

fn fault(o: Outcome) -> (Event, Option<u8>) {
    match o {
        Outcome::Fault { event, level, .. } => (event, level),
        Outcome::Ok(t) => panic!("expected a fault, got {t:?}"),
    }
}

/// Mode 3 tables: L3 at 0x10_0000, L2 at 0x10_1000, L1 at 0x10_2000.
fn three_levels(m: &mut ByteMem, leaf: u64) {
    m.write_u64(0x10_0000, pde(0x10_1000, 2, Perm::RW)).unwrap();
    m.write_u64(0x10_1000, pde(0x10_2000, 1, Perm::RW)).unwrap();
    m.write_u64(0x10_2000 + 5 * 8, leaf).unwrap();
    set_dte(m, DEVID, Dte::translated(0x10_0000, 3, 9, Perm::RW));
}

#[test]
fn four_kib_leaf_translates_with_offset() {
    let mut m = mem();
    three_levels(&mut m, pte(0x40_0000, Perm::RW));
    let t = run(&m, 0x5abc, Access::Write).translation().unwrap();
    assert_eq!((t.spa, t.size_log2, t.level), (0x40_0abc, 12, 1));
    assert_eq!(run(&m, 0x5abc, Access::Read).result().map(|t| t.spa), Ok(0x40_0abc));
    assert_eq!(run(&m, 0x6000, Access::Read).result().map_err(|e| e.name()), Err("IO_PAGE_FAULT"));
}

#[test]
fn level_six_leaves_are_reserved() {
    let mut m = mem();
    // A Mode 6 root whose entry is a leaf: the top level holds no translations (spec Table 15).
    m.write_u64(0x10_0000, pte(0, Perm::RW)).unwrap();
    set_dte(&mut m, DEVID, Dte::translated(0x10_0000, 6, 9, Perm::RW));
    let (e, level) = fault(run(&m, 0x1234, Access::Read));
    assert_eq!((e.code, e.flags, level), (event::IO_PAGE_FAULT, flags::PR | flags::RZ, Some(6)));
}

#[test]
fn v0_passes_through_and_mode0_uses_dte_permissions() {
    let mut m = mem();
    set_dte(&mut m, DEVID, Dte::default());
    assert_eq!(spa(run(&m, 0x1234_5678, Access::Write)), 0x1234_5678);
    let mut d = Dte::translated(0, 0, 9, Perm::new(true, false));
    set_dte(&mut m, DEVID, d);
    assert_eq!(spa(run(&m, 0x7000, Access::Read)), 0x7000);
    let (e, _) = fault(run(&m, 0x7000, Access::Write));
    assert_eq!((e.code, e.flags), (event::IO_PAGE_FAULT, flags::PR | flags::PE | flags::RW));
    d.0[0] &= !2; // TV=0: blocked
    set_dte(&mut m, DEVID, d);
    assert_eq!(fault(run(&m, 0x7000, Access::Read)).0.code, event::IO_PAGE_FAULT);
}

#[test]
fn mode7_and_reserved_bits_are_illegal_dte() {
    let mut m = mem();
    set_dte(&mut m, DEVID, Dte::translated(0x10_0000, 7, 1, Perm::RW));
    let (e, _) = fault(run(&m, 0, Access::Read));
    assert_eq!((e.code, e.flags & flags::RZ), (event::ILLEGAL_DEV_TABLE_ENTRY, flags::RZ));
    let mut d = Dte::translated(0x10_0000, 3, 1, Perm::RW);
    d.0[0] |= 1 << 3;
    set_dte(&mut m, DEVID, d);
    assert_eq!(fault(run(&m, 0, Access::Read)).0.name(), "ILLEGAL_DEV_TABLE_ENTRY");
}

#[test]
fn not_present_entry_faults_with_pr_clear_at_its_level() {
    let mut m = mem();
    three_levels(&mut m, 0);
    let (e, level) = fault(run(&m, 0x5000, Access::Write));
    assert_eq!((e.code, e.devid, e.tag, e.address), (event::IO_PAGE_FAULT, DEVID, 9, 0x5000));
    assert_eq!(e.flags, flags::RW, "PR=0, RW=1, I=0 for a memory write");
    assert_eq!(level, Some(1));
    assert_eq!(fault(run(&m, 0x4000_0000, Access::Read)).1, Some(3), "L3 slot 1 empty");
}

#[test]
fn permissions_are_anded_across_dte_pdes_and_pte() {
    for (dte_p, pde_p, pte_p) in [
        (Perm::new(true, false), Perm::RW, Perm::RW),
        (Perm::RW, Perm::new(true, false), Perm::RW),
        (Perm::RW, Perm::RW, Perm::new(true, false)),
    ] {
        let mut m = mem();
        m.write_u64(0x10_0000, pde(0x10_1000, 2, Perm::RW)).unwrap();
        m.write_u64(0x10_1000, pde(0x10_2000, 1, pde_p)).unwrap();
        m.write_u64(0x10_2000, pte(0x40_0000, pte_p)).unwrap();
        set_dte(&mut m, DEVID, Dte::translated(0x10_0000, 3, 9, dte_p));
        assert_eq!(spa(run(&m, 0x10, Access::Read)), 0x40_0010);
        let (e, level) = fault(run(&m, 0x10, Access::Write));
        assert_eq!(e.flags, flags::PR | flags::PE | flags::RW);
        assert_eq!(level, Some(1));
    }
}

#[test]
fn iova_above_the_modes_reach_faults() {
    let mut m = mem();
    three_levels(&mut m, pte(0x40_0000, Perm::RW));
    let (e, level) = fault(run(&m, 1 << 39, Access::Read));
    assert_eq!((e.code, level), (event::IO_PAGE_FAULT, Some(3)));
}

#[test]
fn next_level_zero_above_level_one_is_a_large_page() {
    let mut m = mem();
    m.write_u64(0x10_0000, pde(0x10_1000, 2, Perm::RW)).unwrap();
    m.write_u64(0x10_1000 + 8, pte(0x60_0000, Perm::RW)).unwrap(); // 2 MiB at IOVA 2 MiB
    m.write_u64(0x10_0000 + 8, pte(0x4000_0000, Perm::RW)).unwrap(); // 1 GiB at IOVA 1 GiB
    set_dte(&mut m, DEVID, Dte::translated(0x10_0000, 3, 9, Perm::RW));
    let t = run(&m, 0x2f_1234, Access::Read).translation().unwrap();
    assert_eq!((t.spa, t.size_log2, t.level), (0x6f_1234, 21, 2));
    let t = run(&m, 0x7654_3210, Access::Read).translation().unwrap();
    assert_eq!((t.spa, t.size_log2, t.level), (0x7654_3210, 30, 3));
}

#[test]
fn next_level_seven_encodes_the_size_in_the_address() {
    let mut m = mem();
    m.write_u64(0x10_0000, pde(0x10_1000, 2, Perm::RW)).unwrap();
    m.write_u64(0x10_1000, pde(0x10_2000, 1, Perm::RW)).unwrap();
    // A 32 KiB page at IOVA 0x8000 -> SPA 0x48_0000, replicated over 8 slots as Linux does.
    for i in 8..16 {
        m.write_u64(0x10_2000 + i * 8, sized_pte(0x48_0000, 15, Perm::RW)).unwrap();
    }
    set_dte(&mut m, DEVID, Dte::translated(0x10_0000, 3, 9, Perm::RW));
    let t = run(&m, 0xf123, Access::Write).translation().unwrap();
    assert_eq!((t.spa, t.size_log2), (0x48_7123, 15));
}

#[test]
fn level_skipping_requires_zero_skipped_bits() {
    let mut m = mem();
    // Mode 4 root whose PDE points straight at a level-1 table (skipping 3 and 2).
    m.write_u64(0x10_0000, pde(0x10_2000, 1, Perm::RW)).unwrap();
    m.write_u64(0x10_2000 + 3 * 8, pte(0x50_0000, Perm::RW)).unwrap();
    set_dte(&mut m, DEVID, Dte::translated(0x10_0000, 4, 9, Perm::RW));
    assert_eq!(spa(run(&m, 0x3008, Access::Read)), 0x50_0008);
    let (e, level) = fault(run(&m, 0x20_3008, Access::Read));
    assert_eq!((e.code, level), (event::IO_PAGE_FAULT, Some(4)), "IOVA bit 21 lies in a skipped level");
}

#[test]
fn reserved_bits_and_bad_next_levels_set_rz() {
    let mut m = mem();
    three_levels(&mut m, pte(0x40_0000, Perm::RW) | (1 << 55));
    let (e, _) = fault(run(&m, 0x5000, Access::Read));
    assert_eq!(e.flags, flags::PR | flags::RZ);
    // A PDE at level 3 that claims its table is at level 3 (a self-reference).
    m.write_u64(0x10_0000, pde(0x10_0000, 3, Perm::RW)).unwrap();
    let (e, level) = fault(run(&m, 0x5000, Access::Read));
    assert_eq!((e.flags, level), (flags::PR | flags::RZ, Some(3)));
}

#[test]
fn a_table_loop_ends_in_a_fault_not_a_hang() {
    let mut m = mem();
    // Every level points back at the root table, each PDE claiming the level below.
    m.write_u64(0x10_0000, pde(0x10_0000, 5, Perm::RW)).unwrap();
    set_dte(&mut m, DEVID, Dte::translated(0x10_0000, 6, 9, Perm::RW));
    // Slot 0 of every level is the same entry: at level 5 it says "next is 5" -> illegal.
    let (e, level) = fault(run(&m, 0, Access::Read));
    assert_eq!((e.flags & flags::RZ, level), (flags::RZ, Some(5)));
}

#[test]
fn a_table_outside_memory_is_a_page_table_hardware_error() {
    let mut m = mem();
    m.write_u64(0x10_0000, pde(0x4000_0000, 2, Perm::RW)).unwrap();
    set_dte(&mut m, DEVID, Dte::translated(0x10_0000, 3, 9, Perm::RW));
    let (e, level) = fault(run(&m, 0, Access::Read));
    assert_eq!((e.code, e.address, level), (event::PAGE_TAB_HARDWARE_ERROR, 0x4000_0000, Some(2)));
    assert_eq!(fault(translate(&m, DevTabBase(0x7f_f000 | 0x1ff), 0xffff, 0, Access::Read)).0.name(), "DEV_TAB_HARDWARE_ERROR");
}

// ---- The IOMMU as a whole: registers, caches, commands, event log ----

const CMDBUF: u64 = 0x2_0000;
const EVTLOG: u64 = 0x3_0000;
const SEM: u64 = 0x4_0000;

fn iommu(m: &mut ByteMem) -> AmdVi {
    let mut vi = AmdVi::new();
    vi.mmio_write(m, mmio::DEV_TABLE_BASE, 8, DEVTAB | 1);
    vi.mmio_write(m, mmio::CMD_BUF_BASE, 8, CMDBUF | 8 << 56);
    vi.mmio_write(m, mmio::EVENT_LOG_BASE, 8, EVTLOG | 8 << 56);
    let ctl = control::IOMMU_EN | control::EVENT_LOG_EN | control::EVENT_INT_EN | control::CMD_BUF_EN | control::COM_WAIT_INT_EN;
    vi.mmio_write(m, mmio::CONTROL, 8, ctl);
    vi
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

fn wait(vi: &mut AmdVi, m: &mut ByteMem, data: u64) {
    submit(vi, m, &[Command::CompletionWait { store: true, interrupt: true, store_addr: SEM, data }]);
    assert_eq!(m.read_u64(SEM).unwrap(), data, "COMPLETION_WAIT stored its data");
}

#[test]
fn a_changed_pte_is_stale_until_invalidate_iommu_pages() {
    let mut m = mem();
    three_levels(&mut m, pte(0x40_0000, Perm::RW));
    let mut vi = iommu(&mut m);
    assert_eq!(spa(vi.translate(&mut m, DEVID, 0x5000, Access::Read)), 0x40_0000);
    m.write_u64(0x10_2000 + 5 * 8, pte(0x70_0000, Perm::RW)).unwrap();
    assert_eq!(spa(vi.translate(&mut m, DEVID, 0x5000, Access::Read)), 0x40_0000, "stale before invalidation");
    // Invalidating another domain, or another range, does not help.
    submit(&mut vi, &mut m, &[Command::InvalidateIommuPages { domain_id: 8, start: 0x5000, len: 0x1000, pde: true }]);
    submit(&mut vi, &mut m, &[Command::InvalidateIommuPages { domain_id: 9, start: 0x6000, len: 0x1000, pde: true }]);
    assert_eq!(spa(vi.translate(&mut m, DEVID, 0x5000, Access::Read)), 0x40_0000);
    submit(&mut vi, &mut m, &[Command::InvalidateIommuPages { domain_id: 9, start: 0x4000, len: 0x2000, pde: true }]);
    wait(&mut vi, &mut m, 1);
    assert_eq!(spa(vi.translate(&mut m, DEVID, 0x5000, Access::Read)), 0x70_0000, "fresh after");
    assert_eq!(vi.mmio_read(mmio::STATUS, 8) & status::COM_WAIT_INT, status::COM_WAIT_INT);
    assert!(vi.take_irq());
}

#[test]
fn a_changed_dte_is_stale_until_invalidate_devtab_entry() {
    let mut m = mem();
    three_levels(&mut m, pte(0x40_0000, Perm::RW));
    let mut vi = iommu(&mut m);
    assert!(vi.translate(&mut m, DEVID, 0x5000, Access::Write).translation().is_some());
    set_dte(&mut m, DEVID, Dte::translated(0x10_0000, 3, 9, Perm::new(true, false)));
    assert!(vi.translate(&mut m, DEVID, 0x5000, Access::Write).translation().is_some(), "stale DTE");
    submit(&mut vi, &mut m, &[Command::InvalidateDevtabEntry { devid: DEVID }]);
    assert!(vi.translate(&mut m, DEVID, 0x5000, Access::Write).translation().is_none());
    // INVALIDATE_IOMMU_ALL drops both caches.
    three_levels(&mut m, pte(0x50_0000, Perm::RW));
    submit(&mut vi, &mut m, &[Command::InvalidateIommuAll]);
    assert_eq!(spa(vi.translate(&mut m, DEVID, 0x5000, Access::Write)), 0x50_0000);
}

#[test]
fn faults_land_in_the_event_log_in_order() {
    let mut m = mem();
    three_levels(&mut m, 0);
    let mut vi = iommu(&mut m);
    vi.translate(&mut m, DEVID, 0x5000, Access::Write);
    vi.translate(&mut m, DEVID, 0x6000, Access::Read);
    assert_eq!(vi.mmio_read(mmio::EVENT_LOG_TAIL, 8), 32);
    let mut rec = [0u8; 16];
    m.read(EVTLOG, &mut rec).unwrap();
    assert_eq!(Event::from_bytes(&rec), Event::io_page_fault(DEVID, 9, flags::RW, 0x5000));
    m.read(EVTLOG + 16, &mut rec).unwrap();
    assert_eq!(Event::from_bytes(&rec).address, 0x6000);
    let st = vi.mmio_read(mmio::STATUS, 8);
    assert_eq!(st & (status::EVENT_LOG_INT | status::EVENT_LOG_RUN), status::EVENT_LOG_INT | status::EVENT_LOG_RUN);
    vi.mmio_write(&mut m, mmio::STATUS, 4, status::EVENT_LOG_INT);
    assert_eq!(vi.mmio_read(mmio::STATUS, 8) & status::EVENT_LOG_INT, 0, "RW1C");
}

#[test]
fn suppressed_faults_are_aborted_but_not_logged() {
    let mut m = mem();
    three_levels(&mut m, 0);
    let mut d = Dte::translated(0x10_0000, 3, 9, Perm::RW);
    d.0[1] |= 1 << 34; // SA
    set_dte(&mut m, DEVID, d);
    let mut vi = iommu(&mut m);
    assert!(matches!(vi.translate(&mut m, DEVID, 0x5000, Access::Read), Outcome::Fault { logged: false, .. }));
    assert_eq!(vi.mmio_read(mmio::EVENT_LOG_TAIL, 8), 0);
}

#[test]
fn a_full_event_log_overflows_drops_and_stops_until_restarted() {
    let mut m = mem();
    three_levels(&mut m, 0);
    let mut vi = iommu(&mut m);
    for i in 0..300u64 {
        vi.translate(&mut m, DEVID, i << 12, Access::Read);
    }
    // 256 entries, one slot kept free to tell full from empty.
    assert_eq!(vi.mmio_read(mmio::EVENT_LOG_TAIL, 8), 255 * 16);
    let st = vi.mmio_read(mmio::STATUS, 8);
    assert_eq!(st & (status::EVENT_OVERFLOW | status::EVENT_LOG_RUN), status::EVENT_OVERFLOW, "overflow stops the log");
    let mut rec = [0u8; 16];
    m.read(EVTLOG + 254 * 16, &mut rec).unwrap();
    assert_eq!(Event::from_bytes(&rec).address, 254 << 12, "the last record that fitted");
    assert!(vi.take_irq(), "EventIntEn: overflow interrupts");
    // Consuming the records alone does not restart logging.
    vi.mmio_write(&mut m, mmio::EVENT_LOG_HEAD, 8, 255 * 16);
    vi.translate(&mut m, DEVID, 0x1000, Access::Read);
    assert_eq!(vi.mmio_read(mmio::EVENT_LOG_TAIL, 8), 255 * 16);
    // Linux amd_iommu_restart_log: EventLogEn and EventIntEn off, EventOverflow cleared, both on.
    let ctl = vi.mmio_read(mmio::CONTROL, 8);
    vi.mmio_write(&mut m, mmio::CONTROL, 8, ctl & !(control::EVENT_LOG_EN | control::EVENT_INT_EN));
    vi.mmio_write(&mut m, mmio::STATUS, 4, status::EVENT_OVERFLOW);
    vi.mmio_write(&mut m, mmio::CONTROL, 8, ctl);
    assert_eq!(vi.mmio_read(mmio::STATUS, 8) & (status::EVENT_OVERFLOW | status::EVENT_LOG_RUN), status::EVENT_LOG_RUN);
    vi.translate(&mut m, DEVID, 0x2000, Access::Read);
    assert_eq!(vi.mmio_read(mmio::EVENT_LOG_TAIL, 8), 0, "logged at the last slot and wrapped");
    m.read(EVTLOG + 255 * 16, &mut rec).unwrap();
    assert_eq!(Event::from_bytes(&rec).address, 0x2000);
}

#[test]
fn status_bits_clear_only_where_ones_are_written() {
    let mut m = mem();
    three_levels(&mut m, 0);
    let mut vi = iommu(&mut m);
    vi.translate(&mut m, DEVID, 0x5000, Access::Read);
    wait(&mut vi, &mut m, 3);
    let both = status::EVENT_LOG_INT | status::COM_WAIT_INT;
    assert_eq!(vi.mmio_read(mmio::STATUS, 8) & both, both);
    // A write to the upper half, or of zeros, or to the read-only run bits, clears nothing.
    vi.mmio_write(&mut m, mmio::STATUS + 4, 4, 0xffff_ffff);
    vi.mmio_write(&mut m, mmio::STATUS, 8, 0);
    vi.mmio_write(&mut m, mmio::STATUS, 8, status::EVENT_LOG_RUN | status::CMD_BUF_RUN);
    let st = vi.mmio_read(mmio::STATUS, 8);
    assert_eq!(st & both, both);
    assert_eq!(st & (status::EVENT_LOG_RUN | status::CMD_BUF_RUN), status::EVENT_LOG_RUN | status::CMD_BUF_RUN);
    vi.mmio_write(&mut m, mmio::STATUS, 4, status::COM_WAIT_INT);
    assert_eq!(vi.mmio_read(mmio::STATUS, 8) & both, status::EVENT_LOG_INT);
}

#[test]
fn run_bits_follow_the_enables() {
    let mut m = mem();
    let mut vi = AmdVi::new();
    let run = status::EVENT_LOG_RUN | status::CMD_BUF_RUN;
    vi.mmio_write(&mut m, mmio::CONTROL, 8, control::EVENT_LOG_EN | control::CMD_BUF_EN);
    assert_eq!(vi.mmio_read(mmio::STATUS, 8) & run, 0, "nothing runs without IommuEn");
    vi.mmio_write(&mut m, mmio::CONTROL, 4, control::IOMMU_EN | control::EVENT_LOG_EN | control::CMD_BUF_EN);
    assert_eq!(vi.mmio_read(mmio::STATUS, 8) & run, run);
    vi.mmio_write(&mut m, mmio::CONTROL, 4, control::IOMMU_EN | control::EVENT_LOG_EN);
    assert_eq!(vi.mmio_read(mmio::STATUS, 8) & run, status::EVENT_LOG_RUN);
    vi.mmio_write(&mut m, mmio::CONTROL, 4, 0);
    assert_eq!(vi.mmio_read(mmio::STATUS, 8) & run, 0);
}

#[test]
fn an_illegal_command_stops_the_processor_and_is_logged() {
    let mut m = mem();
    let mut vi = iommu(&mut m);
    m.write_u64(CMDBUF, 0xf << 60).unwrap();
    let [a, b] = encode(&Command::CompletionWait { store: true, interrupt: false, store_addr: SEM, data: 5 });
    m.write_u64(CMDBUF + 16, a).unwrap();
    m.write_u64(CMDBUF + 24, b).unwrap();
    vi.mmio_write(&mut m, mmio::CMD_BUF_TAIL, 8, 32);
    assert_eq!(vi.mmio_read(mmio::CMD_BUF_HEAD, 8), 0, "head stays at the illegal command");
    assert_eq!(vi.mmio_read(mmio::STATUS, 8) & status::CMD_BUF_RUN, 0);
    assert_eq!(m.read_u64(SEM).unwrap(), 0, "nothing after it ran");
    let mut rec = [0u8; 16];
    m.read(EVTLOG, &mut rec).unwrap();
    assert_eq!(Event::from_bytes(&rec), Event::illegal_command(CMDBUF));
    // Re-enabling the buffer after fixing the command resumes from head.
    m.write_u64(CMDBUF, encode(&Command::InvalidateIommuAll)[0]).unwrap();
    let ctl = vi.mmio_read(mmio::CONTROL, 8);
    vi.mmio_write(&mut m, mmio::CONTROL, 8, ctl & !control::CMD_BUF_EN);
    vi.mmio_write(&mut m, mmio::CONTROL, 8, ctl);
    assert_eq!(vi.mmio_read(mmio::CMD_BUF_HEAD, 8), 32);
    assert_eq!(m.read_u64(SEM).unwrap(), 5);
}

#[test]
fn out_of_range_ring_pointers_are_refused() {
    let mut m = mem();
    let mut vi = iommu(&mut m);
    vi.mmio_write(&mut m, mmio::CMD_BUF_TAIL, 8, 0x7fff0);
    assert_eq!(vi.mmio_read(mmio::STATUS, 8) & status::CMD_BUF_RUN, 0);
    let mut rec = [0u8; 16];
    m.read(EVTLOG, &mut rec).unwrap();
    assert_eq!(Event::from_bytes(&rec).name(), "COMMAND_HARDWARE_ERROR");
}

#[test]
fn registers_read_back_at_spec_offsets() {
    let mut m = mem();
    let vi = iommu(&mut m);
    assert_eq!(vi.mmio_read(mmio::DEV_TABLE_BASE, 8), DEVTAB | 1);
    assert_eq!(vi.mmio_read(mmio::EXT_FEATURES + 4, 4) >> 31, 1, "EFR SNPSup (bit 63)");
    assert_eq!(vi.mmio_read(mmio::EXT_FEATURES, 4) & (1 << 6), 1 << 6, "IASup");
    assert_eq!(vi.mmio_read(mmio::EXT_FEATURES2, 8) & 2, 2, "SEVSNPIO_SUP");
    assert_eq!(vi.mmio_read(0x4000, 4), u64::MAX, "outside the window");
    assert_eq!(vi.mmio_read(3, 4), u64::MAX, "misaligned");
}
