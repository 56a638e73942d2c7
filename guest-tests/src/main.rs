//! Guest-side test suite for tiommu. Runs as root inside the guest: finds the secure IOMMU and the
//! DMA endpoint, builds real AMD-Vi tables in huge pages, drives the scenarios and prints KTAP,
//! ending with "N passed, N failed". Lines "# expect-event TYPE key=value" tell the host which
//! records the daemon's event stream must hold.

mod scenarios;
mod sys;

fn main() {
    let start = std::time::Instant::now();
    let results = scenarios::run();
    scenarios::measure();
    let passed = results.iter().filter(|r| r.1.is_ok()).count();
    let skipped = results.iter().filter(|r| r.1.as_ref().is_err_and(|e| e.starts_with(scenarios::SKIP))).count();
    let failed = results.len() - passed - skipped;
    println!("# guest time {:.2} s", start.elapsed().as_secs_f64());
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
