//! How a scenario reports: its result (an error says what went wrong; one starting with
//! [`SKIP`] says why it cannot run here), and the lines run-vm checks after the run against the
//! daemon's event stream and the guest kernel's log.

use std::time::{Duration, Instant};

pub(crate) type R = Result<(), String>;
/// A scenario that cannot run here says so with an error starting with this.
pub const SKIP: &str = "SKIP: ";

/// Fail the scenario with the message unless `cond` holds.
macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// Poll for up to 5 s: TCG is slow, and a result that never comes is a failure, not a hang.
pub(crate) fn poll(mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    false
}

/// The endpoint, as the event records name it: found by its ids, so a machine that places the
/// functions elsewhere (`tiommu qemu-args --first-slot`) is named as it is (00:04.0 under
/// `tiommu run`).
pub(crate) static ENDPOINT: std::sync::LazyLock<abi::Bdf> = std::sync::LazyLock::new(|| function_bdf(abi::pci::ENDPOINT));

/// Where one of the functions sits (its default slot if it is not there at all).
pub(crate) fn function_bdf(id: abi::pci::PciId) -> abi::Bdf {
    crate::rig::find_function(id).ok().and_then(|d| d.bdf.split_once(':')?.1.parse().ok()).unwrap_or(id.bdf)
}

/// A record the daemon must have written in this boot (`abi::expect!` makes one: the record's
/// type and the fields to compare), checked by the host after the run.
pub(crate) fn expect_event(expected: String) {
    println!("# expect-event {expected}");
}

/// At least `n` records with these fields (`abi::expect!`) must be in the event stream.
pub(crate) fn expect_count(n: u64, expected: String) {
    println!("# expect-count {n} {expected}");
}

/// A line the kernel must log (a regular expression), checked by run-vm against the guest's
/// dmesg after the scenarios: what Linux's own driver made of what the model did.
pub(crate) fn expect_dmesg(regex: &str) {
    println!("# expect-dmesg {regex}");
}
