//! Criterion benchmarks of the translation path: an IOTLB hit, a cold 4-level walk (AMD-Vi and
//! VT-d), a 1 MiB range translated in 4 KiB pages, and the reverse search a conversion to private
//! runs over a device table and its page tables. Figures: docs/performance.md.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use iommu_model::amdvi::builder::V1Builder;
use iommu_model::amdvi::dte::{DevTabBase, Dte};
use iommu_model::amdvi::mmio::{self, control, AmdVi};
use iommu_model::amdvi::translate;
use iommu_model::fmt::vtd_ss;
use iommu_model::mem::{ByteMem, PhysMem};
use iommu_model::vtd::{self, context::ContextEntry, root::RootEntry};
use iommu_model::walk::{Access, Perm};
use std::time::Duration;

const DEVTAB: u64 = 0x1_0000;
const DEVID: u16 = 0x20;

fn setup() -> (ByteMem, AmdVi) {
    let mut m = ByteMem::new(0, 0x100_0000);
    let mut b = V1Builder::new(&mut m, 0x20_0000, 0x40_0000, 4).unwrap();
    for page in 0..256u64 {
        b.map(&mut m, 0x1_0000_0000 + (page << 12), 0x80_0000 + (page << 12), 12, Perm::RW).unwrap();
    }
    m.write(DEVTAB + u64::from(DEVID) * 32, &Dte::translated(b.root, 4, 1, Perm::RW).to_bytes()).unwrap();
    let mut vi = AmdVi::new();
    vi.mmio_write(&mut m, mmio::DEV_TABLE_BASE, 8, DEVTAB | 1);
    vi.mmio_write(&mut m, mmio::CONTROL, 8, control::IOMMU_EN);
    (m, vi)
}

const VTD_RTADDR: u64 = 0x1000;
const VTD_SID: u16 = 0x20;

/// VT-d legacy tables: root, context (AW 2: 4 levels), second-stage tables mapping 256 4 KiB pages
/// at IOVA 4 GiB.
fn setup_vtd() -> ByteMem {
    let mut m = ByteMem::new(0, 0x100_0000);
    m.write(VTD_RTADDR, &RootEntry::new(0x2000).to_bytes()).unwrap();
    m.write(0x2000 + u64::from(VTD_SID & 0xff) * 16, &ContextEntry::new(0x10_0000, 2, 1, 0).to_bytes()).unwrap();
    let iova = 0x1_0000_0000u64;
    let slot = |table: u64, level: u32| table + ((iova >> (12 + 9 * (level - 1))) & 0x1ff) * 8;
    m.write_u64(slot(0x10_0000, 4), vtd_ss::table(0x10_1000, Perm::RW)).unwrap();
    m.write_u64(slot(0x10_1000, 3), vtd_ss::table(0x10_2000, Perm::RW)).unwrap();
    m.write_u64(slot(0x10_2000, 2), vtd_ss::table(0x10_3000, Perm::RW)).unwrap();
    for page in 0..256u64 {
        m.write_u64(0x10_3000 + page * 8, vtd_ss::leaf(0x80_0000 + (page << 12), Perm::RW, false)).unwrap();
    }
    m
}

fn benches(c: &mut Criterion) {
    let (mut m, mut vi) = setup();
    // Every benchmark measures successful translations; a setup mistake would time faults.
    assert!(translate(&m, DevTabBase(DEVTAB | 1), DEVID, 0x1_000f_f123, Access::Write).translation().is_some());
    assert!(vi.translate(&mut m, DEVID, 0x1_0000_0000, Access::Read).translation().is_some());
    c.bench_function("iotlb_hit", |b| b.iter(|| vi.translate(&mut m, black_box(DEVID), black_box(0x1_0000_0123), Access::Read)));
    c.bench_function("cold_walk_4_level", |b| {
        b.iter(|| translate(&m, DevTabBase(DEVTAB | 1), black_box(DEVID), black_box(0x1_0000_0123), Access::Read))
    });
    let vm = setup_vtd();
    let caps = vtd::Caps::default();
    assert!(vtd::translate(&vm, &caps, VTD_RTADDR, VTD_SID, 0x1_0000_0123, Access::Read).translation().is_some());
    c.bench_function("vtd_cold_walk_4_level", |b| {
        b.iter(|| vtd::translate(&vm, &caps, VTD_RTADDR, black_box(VTD_SID), black_box(0x1_0000_0123), Access::Read))
    });
    let mut g = c.benchmark_group("range_1mib_4k_pages");
    g.throughput(Throughput::Bytes(1 << 20));
    g.bench_function("cold", |b| {
        b.iter(|| {
            for page in 0..256u64 {
                black_box(translate(&m, DevTabBase(DEVTAB | 1), DEVID, 0x1_0000_0000 + (page << 12), Access::Write));
            }
        })
    });
    g.bench_function("vtd_cold", |b| {
        b.iter(|| {
            for page in 0..256u64 {
                black_box(vtd::translate(&vm, &caps, VTD_RTADDR, VTD_SID, 0x1_0000_0000 + (page << 12), Access::Write));
            }
        })
    });
    g.bench_function("cached", |b| {
        b.iter(|| {
            for page in 0..256u64 {
                black_box(vi.translate(&mut m, DEVID, 0x1_0000_0000 + (page << 12), Access::Write));
            }
        })
    });
    g.finish();
    // Linux's device table (64K entries, 2 MiB: 512 reads) with the one DTE above, whose 4-level
    // table maps 256 pages; the converted page is one of them.
    let mut big = ByteMem::new(0, 0x100_0000);
    big.bytes[..m.bytes.len()].copy_from_slice(&m.bytes);
    big.write(0x80_0000 + 0x40_0000, &[0; 8]).unwrap();
    let full = DevTabBase(DEVTAB | 0x1ff);
    let mut budget = 4096;
    let found = iommu_model::amdvi::reverse::mappings_of(&big, full, 0x80_5000, 0x1000, &mut budget);
    assert_eq!(found.map(|f| f.len()), Ok(1));
    c.bench_function("reverse_search_64k_devtab_one_domain", |b| {
        b.iter(|| {
            let mut budget = 4096;
            iommu_model::amdvi::reverse::mappings_of(&big, full, black_box(0x80_5000), 0x1000, &mut budget)
        })
    });
}

criterion_group! {
    name = translate_benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(translate_benches);
