//! VT-d legacy-mode translation, one rule per test, on hand-made tables: the second-stage walk,
//! root and context checks with the spec's fault reasons, FPD, and fault record encoding.

use iommu_model::mem::{ByteMem, PhysMem};
use iommu_model::vtd::context::ContextEntry;
use iommu_model::vtd::root::RootEntry;
use iommu_model::vtd::{translate, Caps, FaultReason, FaultRecord, VtdOutcome};
use iommu_model::walk::{Access, Perm};

const RTADDR: u64 = 0x1000;
const CTX: u64 = 0x2000;
const SID: u16 = 0x0020; // 00:04.0
const ROOT_TABLE: u64 = 0x10_0000; // second-stage tables from here, one page each

// Raw second-stage bits, written out here rather than taken from the model.
const R: u64 = 1;
const W: u64 = 2;
const RW: u64 = 3;
const PS: u64 = 1 << 7;

fn mem() -> ByteMem {
    ByteMem::new(0, 0x80_0000)
}

fn write_entry(m: &mut ByteMem, addr: u64, lo: u64, hi: u64) {
    m.write_u64(addr, lo).unwrap();
    m.write_u64(addr + 8, hi).unwrap();
}

/// Root entry for bus 0 and the context entry (lo, hi) for SID.
fn setup(m: &mut ByteMem, lo: u64, hi: u64) {
    write_entry(m, RTADDR, CTX | 1, 0);
    write_entry(m, CTX + u64::from(SID & 0xff) * 16, lo, hi);
}

/// A present TT=0 context entry: SSPTPTR, AW, DID 7.
fn ctx(ssptptr: u64, aw: u64) -> (u64, u64) {
    (ssptptr | 1, aw | 7 << 8)
}

fn set_ctx(m: &mut ByteMem, (lo, hi): (u64, u64)) {
    setup(m, lo, hi);
}

fn slot(table: u64, iova: u64, level: u32) -> u64 {
    table + ((iova >> (12 + 9 * (level - 1))) & 0x1ff) * 8
}

fn tr(m: &ByteMem, iova: u64, access: Access) -> VtdOutcome {
    translate(m, &Caps::default(), RTADDR, SID, iova, access)
}

fn reason(o: VtdOutcome) -> (FaultReason, Option<u8>) {
    match o {
        VtdOutcome::Fault { record, level, .. } => (record.reason, level),
        VtdOutcome::Ok(t) => panic!("expected a fault, got {t:?}"),
    }
}

/// 4-level (48-bit) tables: L4 0x10_0000 -> L3 0x10_1000 -> L2 0x10_2000 -> L1 0x10_3000.
/// IOVA 0x5000 -> 0x40_0000 (4 KiB, `pte` bits), 0x20_0000 -> 0x60_0000 (2 MiB),
/// 0x4000_0000 -> 0x8000_0000 (1 GiB).
fn four_level(m: &mut ByteMem, pte: u64) {
    m.write_u64(slot(0x10_0000, 0, 4), 0x10_1000 | RW).unwrap();
    m.write_u64(slot(0x10_1000, 0, 3), 0x10_2000 | RW).unwrap();
    m.write_u64(slot(0x10_1000, 0x4000_0000, 3), 0x8000_0000 | RW | PS).unwrap();
    m.write_u64(slot(0x10_2000, 0, 2), 0x10_3000 | RW).unwrap();
    m.write_u64(slot(0x10_2000, 0x20_0000, 2), 0x60_0000 | RW | PS).unwrap();
    m.write_u64(slot(0x10_3000, 0x5000, 1), 0x40_0000 | pte).unwrap();
    set_ctx(m, ctx(ROOT_TABLE, 2));
}

#[test]
fn second_stage_4k_2m_and_1g_pages() {
    let mut m = mem();
    four_level(&mut m, RW);
    let t = tr(&m, 0x5abc, Access::Write).translation().unwrap();
    assert_eq!((t.spa, t.size_log2, t.level, t.perm), (0x40_0abc, 12, 1, Perm::RW));
    let t = tr(&m, 0x3f_fff0, Access::Read).translation().unwrap();
    assert_eq!((t.spa, t.size_log2, t.level), (0x7f_fff0, 21, 2));
    let t = tr(&m, 0x7fff_fff8, Access::Write).translation().unwrap();
    assert_eq!((t.spa, t.size_log2, t.level), (0xbfff_fff8, 30, 3));
}

#[test]
fn three_and_five_level_tables_follow_aw() {
    let mut m = mem();
    // AW 1: 3 levels, 39-bit. IOVA 0x7f_c000_1000 uses index 511 at level 3.
    let iova = 0x7f_c000_1000;
    m.write_u64(slot(0x10_0000, iova, 3), 0x10_1000 | RW).unwrap();
    m.write_u64(slot(0x10_1000, iova, 2), 0x10_2000 | RW).unwrap();
    m.write_u64(slot(0x10_2000, iova, 1), 0x12_3000 | R).unwrap();
    set_ctx(&mut m, ctx(ROOT_TABLE, 1));
    assert_eq!(tr(&m, iova + 0x10, Access::Read).translation().unwrap().spa, 0x12_3010);
    assert_eq!(reason(tr(&m, 1 << 39, Access::Read)), (FaultReason::AddressBeyondMgaw, None));

    // AW 3: 5 levels, 57-bit; an IOVA with bit 56 set.
    let mut m = mem();
    let iova = 1u64 << 56 | 0x1000;
    for (level, table) in [(5, 0x10_0000u64), (4, 0x10_1000), (3, 0x10_2000), (2, 0x10_3000)] {
        m.write_u64(slot(table, iova, level), (table + 0x1000) | RW).unwrap();
    }
    m.write_u64(slot(0x10_4000, iova, 1), 0x45_6000 | RW).unwrap();
    set_ctx(&mut m, ctx(ROOT_TABLE, 3));
    let t = tr(&m, iova | 0x234, Access::Write).translation().unwrap();
    assert_eq!((t.spa, t.level), (0x45_6234, 1));
    assert_eq!(reason(tr(&m, 1 << 57, Access::Read)), (FaultReason::AddressBeyondMgaw, None));
    // MGAW below the AGAW limits the input width too (QEMU vtd_iova_limit).
    let caps = Caps { mgaw: 48, ..Caps::default() };
    let o = translate(&m, &caps, RTADDR, SID, iova, Access::Read);
    assert_eq!(reason(o), (FaultReason::AddressBeyondMgaw, None));
}

#[test]
fn permissions_are_anded_and_a_missing_right_names_itself() {
    let mut m = mem();
    four_level(&mut m, R);
    assert_eq!(reason(tr(&m, 0x5000, Access::Write)), (FaultReason::WriteDenied, Some(1)));
    assert_eq!(tr(&m, 0x5000, Access::Read).translation().unwrap().perm, Perm::new(true, false));
    four_level(&mut m, W);
    assert_eq!(reason(tr(&m, 0x5000, Access::Read)), (FaultReason::ReadDenied, Some(1)));
    // A read-only PDE makes every page below it read-only, whatever the PTE says.
    four_level(&mut m, RW);
    m.write_u64(slot(0x10_1000, 0, 3), 0x10_2000 | R).unwrap();
    assert_eq!(reason(tr(&m, 0x5000, Access::Write)), (FaultReason::WriteDenied, Some(3)));
    assert_eq!(tr(&m, 0x5000, Access::Read).translation().unwrap().perm, Perm::new(true, false));
}

#[test]
fn not_present_entries_fault_as_the_missing_right() {
    // Legacy mode has no "not present" reason: R=W=0 is a lack of the requested right.
    let mut m = mem();
    four_level(&mut m, RW);
    assert_eq!(reason(tr(&m, 0x6000, Access::Read)), (FaultReason::ReadDenied, Some(1)));
    assert_eq!(reason(tr(&m, 0x6000, Access::Write)), (FaultReason::WriteDenied, Some(1)));
    assert_eq!(reason(tr(&m, 0x80_0000_0000, Access::Read)), (FaultReason::ReadDenied, Some(4)));
    // Ignored bits do not make an entry present.
    m.write_u64(slot(0x10_3000, 0x6000, 1), 0x40_0000 | 1 << 63 | 1 << 10).unwrap();
    assert_eq!(reason(tr(&m, 0x6000, Access::Read)), (FaultReason::ReadDenied, Some(1)));
}

#[test]
fn a_missing_right_is_found_before_reserved_bits_further_down() {
    let mut m = mem();
    four_level(&mut m, RW | 1 << 11);
    m.write_u64(slot(0x10_1000, 0, 3), 0x10_2000 | R).unwrap();
    assert_eq!(reason(tr(&m, 0x5000, Access::Write)), (FaultReason::WriteDenied, Some(3)));
    assert_eq!(reason(tr(&m, 0x5000, Access::Read)), (FaultReason::PteReserved, Some(1)));
    // On one entry too: the right first, then its reserved bits.
    four_level(&mut m, R | 1 << 11);
    assert_eq!(reason(tr(&m, 0x5000, Access::Write)), (FaultReason::WriteDenied, Some(1)));
    assert_eq!(reason(tr(&m, 0x5000, Access::Read)), (FaultReason::PteReserved, Some(1)));
}

#[test]
fn reserved_bits_in_entries_fault_0xc_at_their_level() {
    let mut m = mem();
    four_level(&mut m, RW);
    // SNP (bit 11) and TM (bit 62) in a PTE.
    for bit in [11, 62] {
        m.write_u64(slot(0x10_3000, 0x5000, 1), 0x40_0000 | RW | 1 << bit).unwrap();
        assert_eq!(reason(tr(&m, 0x5000, Access::Read)), (FaultReason::PteReserved, Some(1)), "bit {bit}");
    }
    // Ignored bits (10, 52..61, 63) and EMT/IPAT/A/D (2..6, 8, 9) are accepted.
    m.write_u64(slot(0x10_3000, 0x5000, 1), 0x40_0000 | RW | 0xbff0_0000_0000_077c).unwrap();
    assert_eq!(tr(&m, 0x5000, Access::Read).translation().unwrap().spa, 0x40_0000);
    m.write_u64(slot(0x10_2000, 0, 2), 0x10_3000 | RW | 0x78).unwrap();
    assert_eq!(tr(&m, 0x5000, Access::Read).translation().unwrap().spa, 0x40_0000);
    // A 2 MiB page whose address bits 20:12 are not zero.
    m.write_u64(slot(0x10_2000, 0x20_0000, 2), 0x60_1000 | RW | PS).unwrap();
    assert_eq!(reason(tr(&m, 0x20_0000, Access::Read)), (FaultReason::PteReserved, Some(2)));
    // PS at level 4 is reserved: no 512 GiB pages.
    m.write_u64(slot(0x10_0000, 0, 4), RW | PS).unwrap();
    assert_eq!(reason(tr(&m, 0x5000, Access::Read)), (FaultReason::PteReserved, Some(4)));
}

#[test]
fn host_address_width_and_superpage_caps_make_bits_reserved() {
    let mut m = mem();
    four_level(&mut m, RW);
    m.write_u64(slot(0x10_3000, 0x5000, 1), 1 << 40 | RW).unwrap();
    assert_eq!(tr(&m, 0x5000, Access::Read).translation().unwrap().spa, 1 << 40);
    let haw39 = Caps { haw: 39, ..Caps::default() };
    let o = translate(&m, &haw39, RTADDR, SID, 0x5000, Access::Read);
    assert_eq!(reason(o), (FaultReason::PteReserved, Some(1)));
    let no_1g = Caps { sp_1g: false, ..Caps::default() };
    let o = translate(&m, &no_1g, RTADDR, SID, 0x4000_0000, Access::Read);
    assert_eq!(reason(o), (FaultReason::PteReserved, Some(3)));
    let no_2m = Caps { sp_2m: false, ..Caps::default() };
    let o = translate(&m, &no_2m, RTADDR, SID, 0x20_0000, Access::Read);
    assert_eq!(reason(o), (FaultReason::PteReserved, Some(2)));
}

#[test]
fn tables_outside_memory() {
    let mut m = mem();
    four_level(&mut m, RW);
    // A PDE pointing outside memory: the next table cannot be read (0x7), at the level read.
    m.write_u64(slot(0x10_1000, 0, 3), 0x4000_0000 | RW).unwrap();
    assert_eq!(reason(tr(&m, 0x5000, Access::Read)), (FaultReason::NextTableInvalid, Some(2)));
    // SSPTPTR outside memory is a badly programmed context entry (0x3).
    set_ctx(&mut m, ctx(0x4000_0000, 2));
    assert_eq!(reason(tr(&m, 0x5000, Access::Read)), (FaultReason::InvalidContext, Some(4)));
}

#[test]
fn root_entry_faults() {
    let mut m = mem();
    assert_eq!(reason(tr(&m, 0, Access::Read)), (FaultReason::RootNotPresent, None));
    four_level(&mut m, RW);
    write_entry(&mut m, RTADDR, CTX | 1 | 0x10, 0);
    assert_eq!(reason(tr(&m, 0, Access::Read)), (FaultReason::RootReserved, None), "lo bit 4");
    write_entry(&mut m, RTADDR, CTX | 1, 1);
    assert_eq!(reason(tr(&m, 0, Access::Read)), (FaultReason::RootReserved, None), "hi");
    write_entry(&mut m, RTADDR, CTX | 1 << 45 | 1, 0);
    let haw39 = Caps { haw: 39, ..Caps::default() };
    let o = translate(&m, &haw39, RTADDR, SID, 0, Access::Read);
    assert_eq!(reason(o), (FaultReason::RootReserved, None), "CTP above HAW");
    write_entry(&mut m, RTADDR, 0x4000_0000 | 1, 0);
    assert_eq!(reason(tr(&m, 0, Access::Read)), (FaultReason::ContextTableInvalid, None));
    let o = translate(&m, &Caps::default(), 0x4000_0000, SID, 0, Access::Read);
    assert_eq!(reason(o), (FaultReason::RootTableInvalid, None));
    // The bus selects the root entry: bus 1 has none.
    assert_eq!(reason(translate(&m, &Caps::default(), RTADDR, 0x100 | SID, 0, Access::Read)).0, FaultReason::RootNotPresent);
}

#[test]
fn context_entry_faults() {
    let mut m = mem();
    four_level(&mut m, RW);
    let o = translate(&m, &Caps::default(), RTADDR, SID + 1, 0, Access::Read);
    assert_eq!(reason(o), (FaultReason::ContextNotPresent, None));
    let (lo, hi) = ctx(ROOT_TABLE, 2);
    for (what, lo, hi) in [("lo bit 4", lo | 0x10, hi), ("hi bit 7", lo, hi | 0x80), ("hi bit 40", lo, hi | 1 << 40)] {
        setup(&mut m, lo, hi);
        assert_eq!(reason(tr(&m, 0x5000, Access::Read)), (FaultReason::ContextReserved, None), "{what}");
    }
    setup(&mut m, lo | 1 << 45, hi);
    let haw39 = Caps { haw: 39, ..Caps::default() };
    let o = translate(&m, &haw39, RTADDR, SID, 0x5000, Access::Read);
    assert_eq!(reason(o), (FaultReason::ContextReserved, None), "SSPTPTR above HAW");
    // Software-available bits 6:3 of hi are not reserved.
    setup(&mut m, lo, hi | 0x78);
    assert!(tr(&m, 0x5000, Access::Read).translation().is_some());
    for aw in [0, 4, 5, 7] {
        setup(&mut m, lo, aw | 7 << 8);
        assert_eq!(reason(tr(&m, 0x5000, Access::Read)), (FaultReason::InvalidContext, None), "AW {aw}");
    }
    setup(&mut m, lo, hi);
    let no_48 = Caps { sagaw: 0b1010, ..Caps::default() };
    let o = translate(&m, &no_48, RTADDR, SID, 0x5000, Access::Read);
    assert_eq!(reason(o), (FaultReason::InvalidContext, None), "AW 2 not in SAGAW");
}

#[test]
fn translation_types() {
    let mut m = mem();
    four_level(&mut m, RW);
    let (lo, hi) = ctx(ROOT_TABLE, 2);
    setup(&mut m, lo | 3 << 2, hi);
    assert_eq!(reason(tr(&m, 0x5000, Access::Read)), (FaultReason::InvalidContext, None), "TT 3");
    setup(&mut m, lo | 1 << 2, hi);
    assert_eq!(reason(tr(&m, 0x5000, Access::Read)), (FaultReason::InvalidContext, None), "TT 1 without ECAP.DT");
    let dt = Caps { device_tlb: true, ..Caps::default() };
    assert_eq!(translate(&m, &dt, RTADDR, SID, 0x5000, Access::Read).translation().unwrap().spa, 0x40_0000);
    // TT 2: the IOVA is the address, whatever the tables say.
    setup(&mut m, 2 << 2 | 1, 2);
    let t = tr(&m, 0x1234_5678, Access::Write).translation().unwrap();
    assert_eq!((t.spa, t.perm), (0x1234_5678, Perm::RW));
    let no_pt = Caps { pass_through: false, ..Caps::default() };
    let o = translate(&m, &no_pt, RTADDR, SID, 0x5000, Access::Read);
    assert_eq!(reason(o), (FaultReason::InvalidContext, None), "TT 2 without ECAP.PT");
}

fn recorded(o: VtdOutcome) -> bool {
    match o {
        VtdOutcome::Fault { recorded, .. } => recorded,
        VtdOutcome::Ok(t) => panic!("expected a fault, got {t:?}"),
    }
}

#[test]
fn fpd_suppresses_qualified_faults_only() {
    let mut m = mem();
    four_level(&mut m, R);
    let (lo, hi) = ctx(ROOT_TABLE, 2);
    setup(&mut m, lo | 2, hi);
    let o = tr(&m, 0x5000, Access::Write);
    assert_eq!((reason(o).0, recorded(o)), (FaultReason::WriteDenied, false));
    setup(&mut m, lo, hi);
    assert!(recorded(tr(&m, 0x5000, Access::Write)));
    // FPD counts in a context entry whose P is clear.
    setup(&mut m, 2, 0);
    let o = tr(&m, 0x5000, Access::Read);
    assert_eq!((reason(o).0, recorded(o)), (FaultReason::ContextNotPresent, false));
    setup(&mut m, lo | 2, 5 | 7 << 8);
    assert!(!recorded(tr(&m, 0x5000, Access::Read)), "invalid AW is qualified");
    // Reserved bits of the context entry are not a qualified fault: recorded despite FPD.
    setup(&mut m, lo | 2 | 0x10, hi);
    let o = tr(&m, 0x5000, Access::Read);
    assert_eq!((reason(o).0, recorded(o)), (FaultReason::ContextReserved, true));
    for r in FaultReason::ALL {
        let qualified = !matches!(r.code(), 0x1 | 0x8 | 0x9 | 0xa | 0xb);
        assert_eq!(r.is_qualified(), qualified, "{r:?}");
    }
}

#[test]
fn outcome_records_carry_source_page_and_access() {
    let mut m = mem();
    four_level(&mut m, R);
    match tr(&m, 0x5abc, Access::Write) {
        VtdOutcome::Fault { record, .. } => {
            assert_eq!(record, FaultRecord { sid: SID, fi: 0x5000, reason: FaultReason::WriteDenied, access: Access::Write })
        }
        o => panic!("{o:?}"),
    }
}

#[test]
fn fault_records_encode_as_linux_decodes_them() {
    let r = FaultRecord::new(SID, 0x1234_5678, Access::Read, FaultReason::ReadDenied);
    let b = r.to_bytes();
    let lo = u64::from_le_bytes(b[..8].try_into().unwrap());
    let hi = u64::from_le_bytes(b[8..].try_into().unwrap());
    assert_eq!(lo, 0x1234_5000);
    // Linux dmar_fault reads FR from byte 12 (hi bits 39:32), T from bit 30 of dword 3.
    assert_eq!((hi & 0xffff, (hi >> 32) & 0xff, (hi >> 62) & 1, hi >> 63), (0x20, 6, 1, 1));
    assert_eq!(b[12], 6);
    assert_eq!(u32::from_le_bytes(b[12..16].try_into().unwrap()) >> 30 & 1, 1);
    let w = FaultRecord::new(0xfffa, 0xdead_b000, Access::Write, FaultReason::WriteDenied).to_bytes();
    assert_eq!(u64::from_le_bytes(w[8..].try_into().unwrap()) >> 62, 0b10, "T=0 for a write, F=1");
    for reason in FaultReason::ALL {
        for access in [Access::Read, Access::Write] {
            let r = FaultRecord::new(0xa5c3, 0xffff_ffff_ffff_f123, access, reason);
            assert_eq!(FaultRecord::from_bytes(&r.to_bytes()), Some(r));
        }
    }
    let mut clear = b;
    clear[15] &= 0x7f;
    assert_eq!(FaultRecord::from_bytes(&clear), None, "F clear: no fault");
    let mut unknown = b;
    unknown[12] = 0x20;
    assert_eq!(FaultRecord::from_bytes(&unknown), None, "an interrupt-remapping reason");
    assert_eq!(r.to_string(), "DMA Read from 00:04.0 at 0x12345000: fault reason 0x06 (PTE Read access is not set)");
}

#[test]
fn entries_serialise_as_two_little_endian_quads() {
    let r = RootEntry::new(0x1234_5000);
    assert_eq!(r.to_bytes()[..8], (0x1234_5001u64).to_le_bytes());
    let c = ContextEntry::new(0xabc_d000, 3, 0xbeef, 2);
    let b = c.to_bytes();
    assert_eq!(u64::from_le_bytes(b[..8].try_into().unwrap()), 0xabc_d000 | 2 << 2 | 1);
    assert_eq!(u64::from_le_bytes(b[8..].try_into().unwrap()), 3 | 0xbeef << 8);
    assert_eq!((c.aw(), c.levels(), c.agaw(), c.did()), (3, 5, 57, 0xbeef));
}
