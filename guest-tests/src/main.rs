//! Guest-side test suite for tiommu. Runs as root inside the guest: finds the secure IOMMU and the
//! DMA endpoint, builds real AMD-Vi tables in huge pages, drives the scenarios and prints KTAP,
//! ending with "N passed, N failed". Lines "# expect-event TYPE key=value" tell the host which
//! records the daemon's event stream must hold.

mod hostile;
#[macro_use]
mod scenarios;
mod ioat;
mod kernel_paths;
mod sys;
mod tdx;

fn main() {
    let start = std::time::Instant::now();
    let mut results = scenarios::run();
    scenarios::measure();
    kernel_paths::measure_map_cost();
    // tiommu.hostile=SECONDS on the kernel command line: a hostile driver for that long, then a
    // normal DMA must still work.
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if let Some(secs) = cmdline.split_whitespace().find_map(|a| a.strip_prefix("tiommu.hostile=")).and_then(|v| v.parse::<u64>().ok()) {
        let r = hostile::run(secs, 0x7469_6f6d_6d75).and_then(|n| {
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
    let skipped = results.iter().filter(|r| r.1.as_ref().is_err_and(|e| e.starts_with(scenarios::SKIP))).count();
    let failed = results.len() - passed - skipped;
    println!("# guest time {:.2} s", start.elapsed().as_secs_f64());
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
