//! What the virtio-iommu's requests cost the daemon once parsed: MAP and UNMAP materialised in a
//! domain's v1 tables, and a translation through them (the endpoint's per-page cost). For
//! docs/kernel-paths.md.
//!
//! `cargo bench -p qemu-device --bench virtio_iommu_domains` (release); under `cargo test` it
//! runs once, briefly, in the test profile.

use iommu_model::amdvi::Outcome;
use iommu_model::walk::Access;
use qemu_device::devices::virtio_iommu::domains::Domains;
use std::time::Instant;

const EP: u32 = 0x20;

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let n: u64 = if quick { 1_000 } else { 200_000 };
    let mut d = Domains::new([EP]);
    assert_eq!(d.attach(1, EP, 0), 0);

    // Linux's DMA API: one 4 KiB MAP per buffer at a fresh IOVA, UNMAP when done.
    let t = Instant::now();
    for i in 0..n {
        let iova = 0x1_0000_0000 + (i % 4096) * 0x1000;
        assert_eq!(d.map(1, iova, iova + 0xfff, 0x20_0000 + (i % 4096) * 0x1000, 3), 0);
        assert_eq!(d.unmap(1, iova, iova + 0xfff), 0);
    }
    let map_unmap = t.elapsed().as_nanos() as f64 / n as f64;

    // One 1 GiB MAP of 2 MiB-aligned memory (an identity domain's RAM region) and its UNMAP.
    let reps = if quick { 5 } else { 200 };
    let t = Instant::now();
    for _ in 0..reps {
        assert_eq!(d.map(1, 0x4020_0000, 0x4020_0000 + (1 << 30) - 1, 0x20_0000, 3), 0);
        assert_eq!(d.unmap(1, 0x4020_0000, 0x4020_0000 + (1 << 30) - 1), 0);
    }
    let big = t.elapsed().as_nanos() as f64 / reps as f64;

    assert_eq!(d.map(1, 0x1_0000_0000, 0x1_0000_0000 + (16 << 20) - 1, 0x20_0000, 3), 0);
    let t = Instant::now();
    for i in 0..n {
        let iova = 0x1_0000_0000 + (i * 0x1000) % (16 << 20);
        assert!(matches!(d.translate(EP, iova, Access::Write), Some(Outcome::Ok(_))));
    }
    let walk = t.elapsed().as_nanos() as f64 / n as f64;
    println!(
        "virtio-iommu domain: MAP+UNMAP 4 KiB {map_unmap:.0} ns, MAP+UNMAP 1 GiB as 2 MiB pages {:.1} us, translate {walk:.0} ns",
        big / 1e3
    );
}
