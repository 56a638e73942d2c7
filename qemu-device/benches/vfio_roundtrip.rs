//! The daemon's share of a guest BAR access: register reads and writes over the vfio-user socket
//! from rust-vmm's client, as QEMU's vfio-user-pci sends them, with no guest and no TCG in the
//! way. For docs/performance.md, beside the guest-side figure run-vm prints.
//!
//! `cargo bench -p qemu-device --bench vfio_roundtrip` (release); under `cargo test` it runs once,
//! briefly, in the test profile.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vfio_user::Client;

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let dir = std::env::temp_dir().join(format!("tiommu-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_tiommu"))
        .args(["daemon", "--socket-dir"])
        .arg(&dir)
        .args(["--events", "/dev/null"])
        .stderr(Stdio::null())
        .spawn()
        .expect("start tiommu daemon");
    let sock = dir.join("endpoint.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut c = Client::new(&sock).expect("connect");
    let n = if quick { 200 } else { 20_000 };
    let mut b = [0u8; 4];
    let mut reads = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        c.region_read(0, 0, &mut b).expect("read");
        reads.push(t.elapsed());
    }
    let mut writes = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        // CTRL with no bits set: a register write with no side effect.
        c.region_write(0, 0x2c, &[0, 0, 0, 0]).expect("write");
        writes.push(t.elapsed());
    }
    for (name, mut v) in [("BAR0 4-byte read", reads), ("BAR0 4-byte write (with reply)", writes)] {
        v.sort();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!("{name}: median {:.1} us, p99 {:.1} us ({n} round trips)", us(v[n / 2]), us(v[n * 99 / 100]));
    }
    drop(c);
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
