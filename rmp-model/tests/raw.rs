//! Golden vectors of raw RMP entries, bit-exact as Linux's `struct rmpentry_raw` (arch/x86/virt/
//! svm/sev.c) and AMD's sev_rmp.h read them, and the property that a reader of the raw table
//! (Linux without RMPREAD: the page's own entry, the level from the 2 MiB-aligned entry) sees
//! what RMPREAD answers, whatever operations ran.

use proptest::prelude::*;
use rmp_model::ops::{AdjustAttrs, GuestCtx, RmpState};
use rmp_model::rmp::RmpReadEntry;
use rmp_model::{PageSize, Rmp, RmpEntry};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Linux's rmpentry_raw bitfields, decoded the way the C compiler lays them out (LSB first):
/// (assigned, pagesize, immutable, gpa pfn, asid, vmsa, validated).
fn linux_raw(b: &[u8; 16]) -> (u64, u64, u64, u64, u64, u64, u64) {
    let lo = u64::from_le_bytes(b[..8].try_into().unwrap());
    let field = |shift: u32, width: u32| (lo >> shift) & ((1u64 << width) - 1);
    (field(0, 1), field(1, 1), field(2, 1), field(12, 39), field(51, 10), field(61, 1), field(62, 1))
}

#[test]
fn golden_vectors() {
    let guest = RmpEntry {
        assigned: true,
        page_size: PageSize::Size2M,
        gpa: 0x1_2345_6000,
        asid: 0x155,
        validated: true,
        vmpl: [0x1f, 0x03, 0, 0],
        ..Default::default()
    };
    let tio = RmpEntry { implicit_key_select: true, root_port_id: 0x1f, ide_stream_id: 0xff, page_migration: 3, ..Default::default() };
    let widest = RmpEntry { assigned: true, gpa: 0x7_ffff_ffff_f000, asid: 0x3ff, vmsa: true, ..Default::default() };
    let head = RmpEntry { subpage_count: 511, ..Default::default() };
    let cases: [(&str, RmpEntry, &str); 7] = [
        ("hypervisor", RmpEntry::default(), "00000000000000000000000000000000"),
        // lo = assigned | pagesize << 1 | gpa | asid << 51 | validated << 62 = 0x4aa8_0001_2345_6003
        ("guest 2 MiB, VMPL0 all, VMPL1 RW", guest, "0360452301 00a84a 1f03000000000000"),
        // sev_rmp.c RMP_ENTRY_VAL_FIRMWARE = 0x8000000000000005 (locked, immutable, assigned)
        ("firmware", RmpEntry::firmware(), "0500000000000080 0000000000000000"),
        // sev_rmp.c RMP_ENTRY_VAL_HV_FIXED = 0x4
        ("hypervisor fixed", RmpEntry { immutable: true, ..Default::default() }, "0400000000000000 0000000000000000"),
        // hi = implicit_key_select << 32 | root_port_id << 49 | ide_stream_id << 54 | page_migration << 62
        ("TIO fields", tio, "0000000000000000 00000000 0100feff"),
        // lo = 1 | GPA[50:12] all ones | ASID 0x3ff << 51 | vmsa << 61
        ("widest GPA and ASID", widest, "01f0ffffffffff3f 0000000000000000"),
        ("2 MiB head, 511 subpages", head, "f80f000000000000 0000000000000000"),
    ];
    for (name, e, want) in cases {
        let want: String = want.chars().filter(|c| !c.is_whitespace()).collect();
        assert_eq!(hex(&e.to_raw()), want, "{name}");
        assert_eq!(RmpEntry::from_raw(&e.to_raw()), e, "{name} round trip");
    }
    let raw = guest.to_raw();
    assert_eq!(linux_raw(&raw), (1, 1, 0, 0x12_3456, 0x155, 0, 1));
}

#[test]
fn rmpread_output_golden_vector() {
    let e = RmpReadEntry {
        gpa: 0x8_0000_5000,
        assigned: true,
        page_size: PageSize::Size2M,
        hpage_region_status: true,
        immutable: true,
        asid: 0x1234,
    };
    assert_eq!(hex(&e.to_bytes()), "00500000080000000103010034120000");
    assert_eq!(RmpReadEntry::from_bytes(&e.to_bytes()), e);
}

/// Bits of the raw entry that hold no field (hi 48:33).
const RESERVED_HI: u64 = ((1u64 << 49) - 1) & !((1u64 << 33) - 1);

#[derive(Clone, Debug)]
enum Op {
    Update { page: u64, big: bool, assigned: bool, asid: u16 },
    Psmash { region: u64 },
    Validate { page: u64, asid: u16, big: bool },
    Adjust { page: u64, asid: u16, perms: u8 },
    Firmware { page: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..2048u64, any::<bool>(), any::<bool>(), 1..4u16).prop_map(|(page, big, assigned, asid)| Op::Update {
            page,
            big,
            assigned,
            asid
        }),
        (0..4u64).prop_map(|region| Op::Psmash { region }),
        (0..2048u64, 1..4u16, any::<bool>()).prop_map(|(page, asid, big)| Op::Validate { page, asid, big }),
        (0..2048u64, 1..4u16, 0..32u8).prop_map(|(page, asid, perms)| Op::Adjust { page, asid, perms }),
        (0..2048u64).prop_map(|page| Op::Firmware { page }),
    ]
}

fn run(r: &mut Rmp, o: &Op) {
    let size = |big: bool| if big { PageSize::Size2M } else { PageSize::Size4K };
    let at = |page: u64, big: bool| if big { page << 12 & !0x1f_ffff } else { page << 12 };
    match *o {
        Op::Update { page, big, assigned, asid } => {
            let spa = at(page, big);
            let st = if assigned { RmpState::private(spa, asid, size(big)) } else { RmpState::shared(size(big)) };
            r.rmpupdate(spa, &st);
        }
        Op::Psmash { region } => {
            r.psmash(region << 21);
        }
        Op::Validate { page, asid, big } => {
            let spa = at(page, big);
            r.pvalidate(GuestCtx { asid, vmpl: 0 }, spa, spa, size(big), true);
        }
        Op::Adjust { page, asid, perms } => {
            let a = AdjustAttrs { target_vmpl: 1, perms, vmsa: false };
            r.rmpadjust(GuestCtx { asid, vmpl: 0 }, page << 12, page << 12, PageSize::Size4K, a);
        }
        Op::Firmware { page } => {
            r.firmware_set(page, RmpEntry::firmware());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn raw_round_trip(b in any::<[u8; 16]>()) {
        let e = RmpEntry::from_raw(&b);
        let mut want = b;
        let hi = u64::from_le_bytes(b[8..].try_into().unwrap()) & !RESERVED_HI;
        want[8..].copy_from_slice(&hi.to_le_bytes());
        prop_assert_eq!(e.to_raw(), want);
    }

    #[test]
    fn the_raw_table_reads_as_rmpread_answers(ops in prop::collection::vec(op(), 1..40)) {
        let mut r = Rmp::new(2048);
        for o in &ops {
            if let Op::Update { page, big, assigned, asid } = *o {
                // An RMPUPDATE rewrites no entry outside the range it reports.
                let before: Vec<_> = (0..2048).map(|p| r.raw(p).unwrap()).collect();
                let spa = if big { page << 12 & !0x1f_ffff } else { page << 12 };
                let size = if big { PageSize::Size2M } else { PageSize::Size4K };
                let st = if assigned { RmpState::private(spa, asid, size) } else { RmpState::shared(size) };
                let res = r.rmpupdate(spa, &st);
                prop_assert!((0..2048u64).filter(|p| !res.changed.contains(p)).all(|p| r.raw(p).unwrap() == before[p as usize]));
            } else {
                run(&mut r, o);
            }
        }
        for pfn in 0..2048u64 {
            let raw = r.raw(pfn).unwrap();
            let (assigned, pagesize, immutable, gpa, asid, _, _) = linux_raw(&raw);
            let rd = r.rmpread(pfn << 12).unwrap();
            prop_assert_eq!((rd.assigned as u64, rd.page_size == PageSize::Size2M, rd.immutable as u64, rd.gpa, u64::from(rd.asid)),
                (assigned, pagesize == 1, immutable, gpa << 12, asid), "pfn {:#x}", pfn);
            // The level Linux takes from the 2 MiB-aligned entry agrees with the page's own.
            let (_, head_size, ..) = linux_raw(&r.raw(pfn & !511).unwrap());
            prop_assert_eq!(head_size, pagesize, "pfn {:#x}", pfn);
            // subpage_count of a 2 MiB-aligned entry: its followers assigned as 4 KiB pages.
            if pfn & 511 == 0 {
                let n = (pfn + 1..pfn + 512).filter(|&p| { let e = r.entry(p).unwrap(); e.assigned && e.page_size == PageSize::Size4K }).count();
                prop_assert_eq!(u64::from(r.entry(pfn).unwrap().subpage_count), n as u64);
            }
        }
        let assigned = (0..2048).filter(|&p| r.entry(p).unwrap().assigned).count() as u32;
        prop_assert_eq!(r.assigned_in_1g(0), assigned);
        for asid in 0..4u16 {
            let n = (0..2048).filter(|&p| { let e = r.entry(p).unwrap(); e.assigned && e.asid == asid }).count() as u64;
            prop_assert_eq!(r.asid_pages(asid), n);
        }
    }
}

/// Operations with unconstrained (hostile) operands: no panic, and the table's invariants hold.
#[derive(Clone, Debug)]
enum Wild {
    Update(u64, u64, bool, bool, bool, u16),
    Psmash(u64),
    Validate(u64, u64, bool, u16, u8, bool),
    Adjust(u64, u64, bool, u16, u8, u8, u8, bool),
    Read(u64),
}

fn wild() -> impl Strategy<Value = Wild> {
    let addr = prop_oneof![any::<u64>(), (0..0x20_0000u64), (0..4u64).prop_map(|r| r << 21)];
    prop_oneof![
        (addr.clone(), addr.clone(), any::<bool>(), any::<bool>(), any::<bool>(), any::<u16>())
            .prop_map(|(a, b, c, d, e, f)| Wild::Update(a, b, c, d, e, f)),
        addr.clone().prop_map(Wild::Psmash),
        (addr.clone(), addr.clone(), any::<bool>(), any::<u16>(), any::<u8>(), any::<bool>())
            .prop_map(|(a, b, c, d, e, f)| Wild::Validate(a, b, c, d, e, f)),
        (addr.clone(), addr.clone(), any::<bool>(), any::<u16>(), any::<u8>(), any::<u8>(), any::<u8>(), any::<bool>())
            .prop_map(|(a, b, c, d, e, f, g, h)| Wild::Adjust(a, b, c, d, e, f, g, h)),
        addr.prop_map(Wild::Read),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn hostile_operands_never_panic(ops in prop::collection::vec(wild(), 1..60)) {
        let mut r = Rmp::new(1024 + 7);
        let size = |big: bool| if big { PageSize::Size2M } else { PageSize::Size4K };
        for o in ops {
            match o {
                Wild::Update(spa, gpa, assigned, big, immutable, asid) => {
                    r.rmpupdate(spa, &RmpState { gpa, assigned, page_size: size(big), immutable, asid });
                }
                Wild::Psmash(spa) => { r.psmash(spa); }
                Wild::Validate(spa, gpa, big, asid, vmpl, v) => { r.pvalidate(GuestCtx { asid, vmpl }, spa, gpa, size(big), v); }
                Wild::Adjust(spa, gpa, big, asid, vmpl, target_vmpl, perms, vmsa) => {
                    r.rmpadjust(GuestCtx { asid, vmpl }, spa, gpa, size(big), AdjustAttrs { target_vmpl, perms, vmsa });
                }
                Wild::Read(spa) => { r.rmpread(spa); r.host_access(spa, true, false, PageSize::Size2M).ok(); }
            }
        }
        // 2 MiB pages stay whole and aligned; subpage counts stay true.
        for head in (0..1024u64).step_by(512) {
            let h = *r.entry(head).unwrap();
            for p in head + 1..head + 512 {
                let e = r.entry(p).unwrap();
                if h.page_size == PageSize::Size2M {
                    prop_assert!(e.page_size == PageSize::Size2M && e.assigned == h.assigned && e.asid == h.asid && e.validated == h.validated);
                } else {
                    prop_assert!(e.page_size == PageSize::Size4K);
                }
            }
        }
        prop_assert!((1024..1031).all(|p| r.entry(p).unwrap().page_size == PageSize::Size4K), "no 2 MiB page past the last whole region");
    }
}
