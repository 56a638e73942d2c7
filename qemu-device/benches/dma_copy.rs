//! The cost of the secure DMA path for a 1 MiB COPY, as the endpoint's worker runs it (every
//! page of both sides translated by the AMD-Vi unit and checked against the RMP with the secure
//! IOMMU's lock taken page by page, then the bytes moved region to region), against a plain copy
//! of the same bytes between the same guest pages. For docs/performance.md.
//!
//! Three kinds, measured the same way: the plain copy, the COPY through 4 KiB mappings (512 page
//! translations: 256 per side, IOTLB hits after the first round) and through 2 MiB mappings (the
//! same 512 requests, each answered by one 2 MiB translation). The kinds take turns within each
//! round, in a rotating order, over the same source and destination pages, so each sees the
//! caches the others left; the figures are medians over the rounds.
//!
//! `cargo bench -p qemu-device --bench dma_copy` (release); under `cargo test` it runs a few
//! rounds, in the test profile.

use iommu_model::amdvi::builder::V1Builder;
use iommu_model::amdvi::dte::Dte;
use iommu_model::amdvi::mmio::{self, control};
use iommu_model::mem::PhysMem;
use iommu_model::walk::Perm;
use qemu_device::secure::dma::{self, PerPage};
use qemu_device::secure::SecureIommu;
use qemu_device::testing::{guest_ram, Null};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RID: u16 = 0x20;
const RAM: u64 = 16 << 20;
const LEN: u64 = 1 << 20;
/// The bytes: source and destination, 2 MiB-aligned so a 2 MiB page maps each.
const SRC: u64 = 0x40_0000;
const DST: u64 = 0x60_0000;
/// The same bytes through 4 KiB pages and through 2 MiB pages.
const IOVA_4K: (u64, u64) = (0x1000_0000, 0x1100_0000);
const IOVA_2M: (u64, u64) = (0x2000_0000, 0x2020_0000);

#[derive(Clone, Copy)]
enum Kind {
    Plain,
    Through4K,
    Through2M,
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let rounds = if quick { 20 } else { 3000 };
    let (ram, _file) = guest_ram("bench-dma-copy", RAM);
    let mut mem = ram.snapshot();

    // The AMD-Vi unit translating RID through v1 tables built in guest RAM (device table at
    // 0x1000, tables from 1 MiB), SNP on so every page is checked against the RMP.
    let mut pt = V1Builder::new(&mut mem, 0x10_0000, 0x20_0000, 4).expect("tables");
    for off in (0..LEN).step_by(0x1000) {
        pt.map(&mut mem, IOVA_4K.0 + off, SRC + off, 12, Perm::RW).expect("4 KiB map");
        pt.map(&mut mem, IOVA_4K.1 + off, DST + off, 12, Perm::RW).expect("4 KiB map");
    }
    pt.map(&mut mem, IOVA_2M.0, SRC, 21, Perm::RW).expect("2 MiB map");
    pt.map(&mut mem, IOVA_2M.1, DST, 21, Perm::RW).expect("2 MiB map");
    mem.write(0x1000 + u64::from(RID) * 32, &Dte::translated(pt.root, 4, 1, Perm::RW).to_bytes()).expect("DTE");
    let mut s = SecureIommu::new(Arc::new(Null), Arc::new(Null));
    s.bar0_write(&mut mem, mmio::DEV_TABLE_BASE, 8, 0x1000);
    s.bar0_write(&mut mem, mmio::CONTROL, 8, control::IOMMU_EN);
    s.enable_snp(&mut mem, RAM >> 12).expect("SNP on");
    let secure = Mutex::new(s);

    let pattern: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    mem.write(SRC, &pattern).expect("source");

    let run = |kind: Kind, mem: &mut qemu_device::vfio::guest_mem::GuestMem| -> Duration {
        let t = Instant::now();
        match kind {
            Kind::Plain => mem.copy(SRC, DST, LEN as usize).expect("plain copy"),
            Kind::Through4K | Kind::Through2M => {
                let (src, dst) = if matches!(kind, Kind::Through4K) { IOVA_4K } else { IOVA_2M };
                // What the endpoint's execute does for a COPY descriptor.
                let plan = dma::plan_copy(&mut PerPage(&secure), mem, RID, false, src, dst, LEN).expect("allowed");
                dma::move_copy(mem, &plan).expect("moved");
            }
        }
        t.elapsed()
    };

    let kinds = [Kind::Plain, Kind::Through4K, Kind::Through2M];
    // Warm-up: caches, the IOTLB, the RMP entries.
    for k in kinds {
        for _ in 0..3 {
            run(k, &mut mem);
        }
    }
    let mut times: [Vec<Duration>; 3] = Default::default();
    for r in 0..rounds {
        for i in 0..3 {
            let k = (r + i) % 3;
            times[k].push(run(kinds[k], &mut mem));
        }
    }
    let mut got = vec![0u8; LEN as usize];
    mem.read(DST, &mut got).expect("destination");
    assert!(got == pattern, "every kind copies the same bytes");

    let median = |v: &mut Vec<Duration>| {
        v.sort_unstable();
        v[v.len() / 2].as_secs_f64()
    };
    let [mut plain, mut t4k, mut t2m] = times;
    let (plain, t4k, t2m) = (median(&mut plain), median(&mut t4k), median(&mut t2m));
    let gbs = |t: f64| LEN as f64 / t / 1e9;
    println!("dma_copy: 1 MiB, median of {rounds} alternated rounds, warm caches");
    println!("dma_copy:   plain copy                {:8.1} us  {:5.1} GB/s", plain * 1e6, gbs(plain));
    for (label, t) in [("through 4 KiB mappings", t4k), ("through 2 MiB mappings", t2m)] {
        println!(
            "dma_copy:   COPY {label} {:8.1} us  {:5.1} GB/s  ratio to the plain copy {:.2} (time {:.2}x)",
            t * 1e6,
            gbs(t),
            plain / t,
            t / plain
        );
    }
}
