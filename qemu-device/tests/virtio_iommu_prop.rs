//! Property: whatever sequence of MAP and UNMAP requests a driver sends, a translation through
//! the domain's materialised v1 tables agrees with the mappings the requests describe (the
//! reference: an ordered map of ranges), including large pages, pages split around left-over
//! tables, partial UNMAPs answered RANGE, and NOMEM rollbacks.

use iommu_model::amdvi::Outcome;
use iommu_model::walk::Access;
use proptest::prelude::*;
use qemu_device::devices::virtio_iommu::domains::Domains;
use qemu_device::devices::virtio_iommu::proto::status;
use std::collections::BTreeMap;

const EP: u32 = 0x20;

#[derive(Clone, Debug)]
enum Op {
    Map { start: u64, pages_log2: u8, pages: u64, phys: u64, flags: u32 },
    Unmap { start: u64, len: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    // IOVAs in a 4 GiB window, so ranges collide often; sizes 4 KiB to 1 GiB.
    let map = (0u64..(1 << 20), prop::sample::select(vec![0u8, 0, 9, 18]), 1u64..4, 0u64..(1 << 20), 0u32..4).prop_map(
        |(p, log2, n, phys, flags)| {
            let align = 1u64 << log2;
            Op::Map { start: (p & !(align - 1)) << 12, pages_log2: log2, pages: n, phys: (phys & !(align - 1)) << 12, flags }
        },
    );
    let unmap = (0u64..(1 << 20), 1u64..(1 << 19)).prop_map(|(p, n)| Op::Unmap { start: p << 12, len: n << 12 });
    prop_oneof![3 => map, 1 => unmap]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn translation_agrees_with_the_requested_mappings(ops in prop::collection::vec(op(), 1..24), probes in prop::collection::vec(0u64..(1 << 32), 32)) {
        let mut d = Domains::new([EP]);
        prop_assert_eq!(d.attach(1, EP, 0), status::OK);
        let mut reference: BTreeMap<u64, (u64, u64, u32)> = BTreeMap::new();
        for o in &ops {
            match *o {
                Op::Map { start, pages_log2, pages, phys, flags } => {
                    let end = start + (pages << (12 + u32::from(pages_log2))) - 1;
                    let overlaps = reference.range(..=end).next_back().is_some_and(|(_, &(e, _, _))| e >= start);
                    let st = d.map(1, start, end, phys, flags);
                    if overlaps {
                        prop_assert_eq!(st, status::INVAL);
                    } else if st == status::OK {
                        reference.insert(start, (end, phys, flags));
                    } else {
                        prop_assert_eq!(st, status::NOMEM);
                    }
                }
                Op::Unmap { start, len } => {
                    let end = start + len - 1;
                    let hit: Vec<u64> = reference.range(..=end).filter(|(_, &(e, _, _))| e >= start).map(|(&s, _)| s).collect();
                    let partial = hit.iter().any(|s| *s < start || reference[s].0 > end);
                    prop_assert_eq!(d.unmap(1, start, end), if partial { status::RANGE } else { status::OK });
                    for s in hit {
                        if s >= start && reference[&s].0 <= end {
                            reference.remove(&s);
                        }
                    }
                }
            }
        }
        let starts: Vec<u64> = reference.keys().copied().collect();
        for iova in probes.iter().copied().chain(starts) {
            let want = reference.range(..=iova).next_back().filter(|(_, &(e, _, _))| e >= iova).map(|(&s, &(_, p, f))| (p + (iova - s), f));
            for access in [Access::Read, Access::Write] {
                let got = d.translate(EP, iova, access).expect("attached");
                let allowed = want.is_some_and(|(_, f)| f & if access == Access::Read { 1 } else { 2 } != 0);
                match got {
                    Outcome::Ok(t) => {
                        prop_assert!(allowed, "{iova:#x} {access:?} translated to {:#x}, reference {want:x?}", t.spa);
                        prop_assert_eq!(t.spa, want.unwrap().0);
                    }
                    Outcome::Fault { .. } => prop_assert!(!allowed, "{iova:#x} {access:?} faulted, reference {want:x?}"),
                }
            }
        }
    }
}
