//! Guest-side test suite for tiommu. Runs as root inside the guest: finds the secure IOMMU and the
//! DMA endpoint, builds real AMD-Vi tables in huge pages, drives the scenarios and prints KTAP,
//! ending with "N passed, N failed". Lines "# expect-event TYPE key=value" tell the host which
//! records the daemon's event stream must hold.

#[macro_use]
mod report;
mod hostile;
mod ioat;
mod kernel_paths;
mod modes;
mod rig;
mod scenarios;
mod sys;
mod tdx;

fn main() {
    let start = std::time::Instant::now();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let arg = |name: &str| cmdline.split_whitespace().find_map(|a| a.strip_prefix(name)).map(str::to_string);
    // tiommu.hostile=SECONDS on the kernel command line: a hostile driver for that long after the
    // scenarios (and, with more than one vCPU, a quiet one on the last vCPU while they run), then
    // a normal DMA must still work. tiommu.hostile_seed=N replays a run (run-vm --hostile-seed).
    let hostile = arg("tiommu.hostile=").and_then(|v| v.parse::<u64>().ok());
    let seed = arg("tiommu.hostile_seed=").and_then(|v| parse_u64(&v)).unwrap_or(0x7469_6f6d_6d75);
    let ncpu = sys::online_cpus();
    let scenarios_done = std::sync::atomic::AtomicBool::new(false);
    let mut results = std::thread::scope(|s| {
        let alongside = (hostile.is_some() && ncpu >= 2).then(|| {
            let done = &scenarios_done;
            s.spawn(move || {
                let _ = sys::pin_to_cpu(Some(ncpu - 1));
                hostile::run(0, seed ^ 0xa1, Some(done))
            })
        });
        let _ = sys::pin_to_cpu(Some(0));
        let mut results = scenarios::run();
        scenarios::measure();
        kernel_paths::measure_map_cost();
        let _ = sys::pin_to_cpu(None);
        scenarios_done.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = alongside {
            let r = t.join().unwrap_or_else(|_| Err("the hostile thread panicked".into()));
            if let Ok(n) = &r {
                println!("# hostile driver alongside the scenarios on vCPU {}: {n} actions", ncpu - 1);
            }
            let i = results.len() + 1;
            match &r {
                Ok(_) => println!("ok {i} hostile_driver_alongside_the_scenarios"),
                Err(e) => println!("not ok {i} hostile_driver_alongside_the_scenarios # {e}"),
            }
            results.push(("hostile_driver_alongside_the_scenarios", r.map(drop)));
        }
        results
    });
    if let Some(secs) = hostile {
        println!("# hostile driver: seed {seed:#x} (replay: scripts/run-vm --hostile {secs} --hostile-seed {seed:#x})");
        let r = hostile::run(secs, seed, None).and_then(|n| {
            println!("# hostile driver: {n} actions in {secs} s");
            scenarios::after_hostile()
        });
        let i = results.len() + 1;
        match &r {
            Ok(()) => println!("ok {i} hostile_driver_then_normal_dma"),
            Err(e) => println!("not ok {i} hostile_driver_then_normal_dma # {e}"),
        }
        results.push(("hostile_driver_then_normal_dma", r));
    }
    let passed = results.iter().filter(|r| r.1.is_ok()).count();
    let skipped = results.iter().filter(|r| r.1.as_ref().is_err_and(|e| e.starts_with(report::SKIP))).count();
    let failed = results.len() - passed - skipped;
    println!("# guest time {:.2} s, {ncpu} vCPUs", start.elapsed().as_secs_f64());
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

/// A number in decimal or 0x-hexadecimal.
fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}
