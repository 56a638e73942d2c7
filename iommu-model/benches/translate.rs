//! Criterion benchmarks of the translation path: an IOTLB hit, a cold 4-level walk, and a 1 MiB
//! range translated in 4 KiB pages. Figures: docs/performance.md.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use iommu_model::amdvi::builder::V1Builder;
use iommu_model::amdvi::dte::{DevTabBase, Dte};
use iommu_model::amdvi::mmio::{self, control, AmdVi};
use iommu_model::amdvi::translate;
use iommu_model::mem::{ByteMem, PhysMem};
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

fn benches(c: &mut Criterion) {
    let (mut m, mut vi) = setup();
    vi.translate(&mut m, DEVID, 0x1_0000_0000, Access::Read);
    c.bench_function("iotlb_hit", |b| {
        b.iter(|| vi.translate(&mut m, black_box(DEVID), black_box(0x1_0000_0123), Access::Read))
    });
    c.bench_function("cold_walk_4_level", |b| {
        b.iter(|| translate(&m, DevTabBase(DEVTAB | 1), black_box(DEVID), black_box(0x1_0000_0123), Access::Read))
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
    g.bench_function("cached", |b| {
        b.iter(|| {
            for page in 0..256u64 {
                black_box(vi.translate(&mut m, DEVID, 0x1_0000_0000 + (page << 12), Access::Write));
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = translate_benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(translate_benches);
