//! The end of a run: the scenarios with their result and time, the event counts by type, the
//! daemon's peak memory and the run's timings, as a table for a person and (`--json FILE`) as
//! one JSON document for a CI system.

use super::console::{ktap, Ktap};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write;

/// The guest's results port split per boot (`=== run-vm boot N` lines, written by the runner
/// before each boot).
pub fn split_boots(results: &str) -> Vec<Vec<String>> {
    let lines: Vec<String> = results.lines().map(|l| l.trim_end_matches('\r').to_string()).collect();
    let mut boots: Vec<Vec<String>> = vec![vec![]];
    for l in &lines {
        if l.starts_with(BOOT_MARK) {
            boots.push(vec![]);
        } else if let Some(b) = boots.last_mut() {
            b.push(l.clone());
        }
    }
    if boots.len() > 1 {
        boots.remove(0);
        boots
    } else {
        vec![lines]
    }
}

pub const BOOT_MARK: &str = "=== run-vm boot ";

/// The daemon's peak memory, from its exit record or (--persist) the end of each session.
pub fn peak_rss_kib(events: &[Value]) -> u64 {
    events
        .iter()
        .filter(|e| e["type"] == "daemon_exit" || e["type"] == "power_cycle")
        .filter_map(|e| e["peak_rss_kib"].as_u64())
        .max()
        .unwrap_or(0)
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub boot: usize,
    pub n: u32,
    pub name: String,
    /// "ok", "FAIL" or "skip".
    pub result: &'static str,
    pub reason: String,
    /// From the previous result (or the guest program's start) to this one, host time.
    pub secs: Option<f64>,
}

/// The scenarios of each boot from the guest's results port; times from the console's time
/// stamps (`stamped`: seconds since launch and the console line, in order), matched by boot and
/// number.
pub fn scenarios(boots: &[Vec<String>], stamped: &[(f64, String)]) -> Vec<Scenario> {
    // Result times per boot, from the console (which repeats the guest's output).
    let mut times: Vec<BTreeMap<u32, f64>> = vec![BTreeMap::new()];
    let mut starts: Vec<Option<f64>> = vec![None];
    for (t, l) in stamped {
        if l.starts_with(BOOT_MARK) {
            if !times.last().is_some_and(|m| m.is_empty()) || starts.last().is_some_and(|s| s.is_some()) {
                times.push(BTreeMap::new());
                starts.push(None);
            }
            continue;
        }
        if l.starts_with("tiommu-guest: start") {
            if let Some(s) = starts.last_mut() {
                *s = Some(*t);
            }
        }
        if let Some(Ktap::Result { n, .. }) = ktap(l) {
            if let Some(m) = times.last_mut() {
                m.entry(n).or_insert(*t);
            }
        }
    }
    let mut out = Vec::new();
    for (b, lines) in boots.iter().enumerate() {
        let empty = BTreeMap::new();
        let tm = times.get(b).unwrap_or(&empty);
        let mut prev = starts.get(b).copied().flatten();
        for l in lines {
            if let Some(Ktap::Result { n, name, ok, skip, reason }) = ktap(l) {
                let t = tm.get(&n).copied();
                let secs = match (prev, t) {
                    (Some(p), Some(t)) => Some((t - p).max(0.0)),
                    _ => None,
                };
                prev = t.or(prev);
                let result = if skip {
                    "skip"
                } else if ok {
                    "ok"
                } else {
                    "FAIL"
                };
                out.push(Scenario { boot: b + 1, n, name, result, reason, secs });
            }
        }
    }
    out
}

#[derive(Debug, Default)]
pub struct Summary {
    pub kernel: String,
    pub mode: String,
    pub boots: usize,
    pub scenarios: Vec<Scenario>,
    /// The checker's lines (`tiommu check`: each expectation held or lacking, the daemon's
    /// memory, its records by type, what the kernel's IOMMU driver sent, copy rates).
    pub event_counts: BTreeMap<String, u64>,
    pub checks: Vec<String>,
    pub peak_rss_kib: u64,
    /// Named timings in seconds, in the order they happened.
    pub timings: Vec<(&'static str, f64)>,
    /// Why the run failed, each a sentence; empty when it passed.
    pub failures: Vec<String>,
}

impl Summary {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        if !self.scenarios.is_empty() {
            let w = self.scenarios.iter().map(|x| x.name.len()).max().unwrap_or(0).max(8);
            let boots = self.scenarios.iter().any(|x| x.boot > 1);
            let _ = writeln!(s, "{}  #  {:w$}  result  time", if boots { "boot" } else { "" }, "scenario");
            for x in &self.scenarios {
                let t = x.secs.map(|t| format!("{t:5.2} s")).unwrap_or_else(|| "    - ".into());
                let b = if boots { format!("{:>4}", x.boot) } else { String::new() };
                let why = match x.reason.char_indices().nth(72) {
                    _ if x.result == "ok" || x.reason.is_empty() => String::new(),
                    Some((i, _)) => format!("  {}...", &x.reason[..i]),
                    None => format!("  {}", x.reason),
                };
                let line = format!("{b}{:>3}  {:w$}  {:6}  {t}{why}", x.n, x.name, x.result);
                let _ = writeln!(s, "{}", line.trim_end());
            }
            let count = |r: &str| self.scenarios.iter().filter(|x| x.result == r).count();
            let _ = writeln!(s, "{} passed, {} failed, {} skipped", count("ok"), count("FAIL"), count("skip"));
        }
        for l in &self.checks {
            let _ = writeln!(s, "{l}");
        }
        // Without the checker's lines (a run that ended early, an initramfs of the user's): the
        // counts and the memory from the stream.
        if self.checks.is_empty() {
            if !self.event_counts.is_empty() {
                let c: Vec<String> = self.event_counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let _ = writeln!(s, "daemon events: {}", c.join(", "));
            }
            if self.peak_rss_kib > 0 {
                let _ = writeln!(s, "daemon peak memory: {} MiB", (self.peak_rss_kib + 512) / 1024);
            }
        }
        if !self.timings.is_empty() {
            let t: Vec<String> = self.timings.iter().map(|(k, v)| format!("{k} {v:.1} s")).collect();
            let _ = writeln!(s, "timings: {}", t.join(", "));
        }
        if self.passed() {
            let _ = writeln!(s, "PASSED");
        } else {
            for f in &self.failures {
                let _ = writeln!(s, "FAILED: {f}");
            }
        }
        s
    }

    pub fn json(&self) -> Value {
        json!({
            "passed": self.passed(),
            "failures": self.failures,
            "kernel": self.kernel,
            "mode": self.mode,
            "boots": self.boots,
            "scenarios": self.scenarios.iter().map(|x| json!({
                "boot": x.boot, "n": x.n, "name": x.name, "result": match x.result { "ok" => "pass", "FAIL" => "fail", _ => "skip" },
                "reason": x.reason, "seconds": x.secs,
            })).collect::<Vec<_>>(),
            "checks": self.checks,
            "event_counts": self.event_counts,
            "daemon_peak_rss_kib": self.peak_rss_kib,
            "timings_s": self.timings.iter().map(|(k, v)| ((*k).to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ls(s: &str) -> Vec<String> {
        s.lines().map(String::from).collect()
    }

    #[test]
    fn scenario_times_are_the_gaps_between_results() {
        let boots = vec![ls("KTAP version 1\n1..3\nok 1 a\nnot ok 2 b # wrong bytes\nok 3 c # SKIP not here\n2 passed, 1 failed")];
        let stamped: Vec<(f64, String)> =
            [(1.0, "tiommu-guest: start 3.1"), (1.5, "ok 1 a"), (2.75, "not ok 2 b # wrong bytes"), (3.0, "ok 3 c # SKIP not here")]
                .map(|(t, l)| (t, l.to_string()))
                .to_vec();
        let s = scenarios(&boots, &stamped);
        assert_eq!(s.iter().map(|x| x.secs.unwrap()).collect::<Vec<_>>(), [0.5, 1.25, 0.25]);
        assert_eq!(s.iter().map(|x| x.result).collect::<Vec<_>>(), ["ok", "FAIL", "skip"]);
        assert_eq!(s[1].reason, "wrong bytes");
    }

    #[test]
    fn boots_keep_their_own_times() {
        let boots = vec![ls("ok 1 a"), ls("ok 1 a")];
        let stamped: Vec<(f64, String)> = [
            (0.0, "=== run-vm boot 1"),
            (1.0, "tiommu-guest: start"),
            (2.0, "ok 1 a"),
            (5.0, "=== run-vm boot 2"),
            (6.0, "tiommu-guest: start"),
            (9.0, "ok 1 a"),
        ]
        .map(|(t, l)| (t, l.to_string()))
        .to_vec();
        let s = scenarios(&boots, &stamped);
        assert_eq!((s[0].boot, s[0].secs), (1, Some(1.0)));
        assert_eq!((s[1].boot, s[1].secs), (2, Some(3.0)));
    }

    #[test]
    fn table_and_json_say_the_same() {
        let mut sum = Summary {
            kernel: "bzImage".into(),
            mode: "plain".into(),
            boots: 1,
            scenarios: scenarios(&[ls("ok 1 a\nnot ok 2 b # why")], &[]),
            checks: vec!["event stream has dma".into(), "event stream LACKS hazard".into(), "daemon events: dma=2, hazard=1".into()],
            event_counts: [("dma".to_string(), 2), ("hazard".to_string(), 1)].into(),
            peak_rss_kib: 20 * 1024,
            timings: vec![("launch to first result", 4.25)],
            ..Summary::default()
        };
        sum.failures.push("scenario 2 (b) failed".into());
        let t = sum.table();
        assert!(t.contains("\n  1  a         ok          -\n  2  b         FAIL        -   why\n"), "{t}");
        assert!(t.contains("1 passed, 1 failed, 0 skipped\nevent stream has dma\nevent stream LACKS hazard\n"), "the checker's lines: {t}");
        assert_eq!(t.matches("daemon events:").count(), 1, "the counts once, the checker's: {t}");
        assert!(!t.contains("daemon peak memory: 20 MiB"), "the checker says it: {t}");
        assert!(t.contains("timings: launch to first result 4.2 s") || t.contains("timings: launch to first result 4.3 s"), "{t}");
        assert!(t.ends_with("FAILED: scenario 2 (b) failed\n"), "{t}");
        let early =
            Summary { checks: vec![], ..Summary { event_counts: sum.event_counts.clone(), peak_rss_kib: 20 * 1024, ..Summary::default() } };
        let t2 = early.table();
        assert!(t2.contains("daemon events: dma=2, hazard=1") && t2.contains("daemon peak memory: 20 MiB"), "no checker lines: {t2}");
        let j = sum.json();
        assert_eq!(j["passed"], false);
        assert_eq!(j["scenarios"][1]["result"], "fail");
        assert_eq!(j["event_counts"]["dma"], 2);
        assert_eq!(j["timings_s"]["launch to first result"], 4.25);
        assert_eq!(j["checks"][1], "event stream LACKS hazard");
    }
}
