//! A VT-d request through root, context and second-stage tables that the input writes, with
//! arbitrary capabilities, root table address, source-id, IOVA and access. Whatever the tables
//! say, the answer is a translation consistent with the request or a well-formed fault record,
//! the same every time, without a panic.
//!
//! Input: 16-byte header (caps, flags, sid, rtaddr page, iova), then 10-byte writes of a u64
//! into a 32 KiB memory (u16 slot index, u64 value): compact, so libFuzzer reaches five-level
//! walks with short inputs.
#![no_main]

use iommu_model::mem::{ByteMem, PhysMem};
use iommu_model::vtd::{translate, Caps, FaultRecord, VtdOutcome};
use iommu_model::walk::Access;
use libfuzzer_sys::fuzz_target;

const MEM: usize = 0x8000;

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let (h, writes) = data.split_at(16);
    let caps = Caps {
        haw: 12 + h[0] % 41,
        mgaw: 39 + h[1] % 26,
        sagaw: h[2],
        sp_2m: h[3] & 1 != 0,
        sp_1g: h[3] & 2 != 0,
        pass_through: h[3] & 4 != 0,
        device_tlb: h[3] & 8 != 0,
    };
    let access = if h[3] & 0x10 != 0 { Access::Write } else { Access::Read };
    let sid = u16::from_le_bytes([h[4], h[5]]);
    // Mostly inside memory; the top bit of h[6] puts the root table anywhere.
    let rtaddr = if h[6] & 0x80 != 0 { u64::from(h[6]) << 40 | u64::from(h[7]) << 12 } else { u64::from(h[7] & 7) << 12 };
    let iova = u64::from_le_bytes(h[8..16].try_into().unwrap());
    let mut mem = ByteMem::new(0, MEM);
    for w in writes.chunks_exact(10) {
        let slot = u64::from(u16::from_le_bytes([w[0], w[1]])) % (MEM as u64 / 8);
        mem.write_u64(slot * 8, u64::from_le_bytes(w[2..10].try_into().unwrap())).unwrap();
    }

    let o = translate(&mem, &caps, rtaddr, sid, iova, access);
    assert_eq!(o, translate(&mem, &caps, rtaddr, sid, iova, access));
    match o {
        VtdOutcome::Ok(t) => {
            assert!(t.perm.allows(access));
            assert!(matches!((t.level, t.size_log2), (0 | 1, 12) | (2, 21) | (3, 30)), "{t:?}");
            let mask = t.page_size() - 1;
            assert_eq!(t.spa & mask, iova & mask);
            if t.level > 0 {
                assert!(t.spa >> caps.haw.clamp(32, 52) == 0, "output above HAW: {t:?}");
            }
        }
        VtdOutcome::Fault { record, level, recorded } => {
            assert_eq!((record.sid, record.fi, record.access), (sid, iova & !0xfff, access));
            assert!(level.is_none_or(|l| (1..=5).contains(&l)));
            assert!(recorded || record.reason.is_qualified());
            assert_eq!(FaultRecord::from_bytes(&record.to_bytes()), Some(record));
        }
    }
});
