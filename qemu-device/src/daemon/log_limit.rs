//! Warnings a guest can trigger at will (a refused SNP enable, a request queue that is not in
//! guest RAM, a refused MAP, a full DMA queue, a halted IOAT channel) and the notes it can
//! trigger as often (a function-level reset) reach the daemon's log a bounded number of times:
//! the first 8 of each, then one in 1024 with its count. The event stream has the details.

use std::sync::atomic::{AtomicU64, Ordering};

pub struct Limited(AtomicU64);

impl Limited {
    pub const fn new() -> Self {
        Limited(AtomicU64::new(0))
    }

    /// The occurrence's number when it should be logged.
    pub fn hit(&self) -> Option<u64> {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        (n < 8 || n.is_multiple_of(1024)).then(|| n.saturating_add(1))
    }
}

impl Default for Limited {
    fn default() -> Self {
        Self::new()
    }
}

/// `tracing::warn!` at most as often as `Limited` allows, per call site.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::daemon::log_limit::Limited = $crate::daemon::log_limit::Limited::new();
        if let Some(n) = LIMIT.hit() {
            tracing::warn!(occurrence = n, $($arg)+);
        }
    }};
}

/// `tracing::info!` at most as often as `Limited` allows, per call site.
#[macro_export]
macro_rules! info_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::daemon::log_limit::Limited = $crate::daemon::log_limit::Limited::new();
        if let Some(n) = LIMIT.hit() {
            tracing::info!(occurrence = n, $($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_first_eight_then_one_in_1024() {
        let l = super::Limited::new();
        let logged: Vec<u64> = (0..5000).filter_map(|_| l.hit()).collect();
        assert_eq!(logged, [1, 2, 3, 4, 5, 6, 7, 8, 1025, 2049, 3073, 4097]);
    }
}
