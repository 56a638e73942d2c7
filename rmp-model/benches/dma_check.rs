//! Criterion benchmark of the SEV-TIO DMA check per 4 KiB page (T=0 write to a hypervisor page,
//! T=1 private access). Figures: docs/performance.md.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use rmp_model::dma_check::{DmaRequest, TdiBinding};
use rmp_model::ops::{GuestCtx, RmpState};
use rmp_model::tdisp::TdiState;
use rmp_model::{PageSize, Rmp};
use std::time::Duration;

fn benches(c: &mut Criterion) {
    let mut rmp = Rmp::new(1 << 18); // 1 GiB
    for p in 0..256u64 {
        let spa = 0x100_0000 + (p << 12);
        rmp.rmpupdate(spa, &RmpState::private(p << 12, 5, PageSize::Size4K));
        rmp.pvalidate(GuestCtx { asid: 5, vmpl: 0 }, spa, p << 12, PageSize::Size4K, true);
    }
    let t0 = DmaRequest { requester: 0x20, t: false, tdi: None, iova: 0x5000, spa: 0x200_5000, write: true, mapping_size_log2: 12 };
    c.bench_function("dma_check_t0_write", |b| b.iter(|| rmp.check_dma(black_box(&t0))));
    let t0_2m = DmaRequest { mapping_size_log2: 21, ..t0 };
    c.bench_function("dma_check_t0_write_2m_mapping", |b| b.iter(|| rmp.check_dma(black_box(&t0_2m))));
    let tdi = TdiBinding { asid: 5, vtom: 1 << 40, state: TdiState::Run };
    let t1 = DmaRequest { requester: 0x20, t: true, tdi: Some(tdi), iova: 0x7000, spa: 0x100_7000, write: true, mapping_size_log2: 12 };
    c.bench_function("dma_check_t1_private", |b| b.iter(|| rmp.check_dma(black_box(&t1))));
    let refused = DmaRequest { spa: 0x100_7000, ..t0 };
    c.bench_function("dma_check_t0_write_refused", |b| b.iter(|| rmp.check_dma(black_box(&refused))));
    // A 1 GiB I/O page over 1 GiB of hypervisor memory: the size rule reads 512 2 MiB heads.
    let clean = Rmp::new(1 << 18);
    let t0_1g = DmaRequest { mapping_size_log2: 30, ..t0 };
    c.bench_function("dma_check_t0_write_1g_mapping", |b| b.iter(|| clean.check_dma(black_box(&t0_1g))));
    // A page whose RMP entry is in no cache line the loop touched before: 4096 pages apart.
    let mut i = 0u64;
    c.bench_function("dma_check_t0_write_strided", |b| {
        b.iter(|| {
            i = (i + 4099) & ((1 << 18) - 1);
            rmp.check_dma(black_box(&DmaRequest { spa: i << 12, ..t0 }))
        })
    });
}

criterion_group! {
    name = dma;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(dma);
