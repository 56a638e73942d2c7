//! What the guest reported against what the daemon recorded: the guest's result line, each
//! `# expect-event`, `# expect-count` and `# expect-dmesg` line against the event stream of its
//! own boot (or the dmesg /init printed), the IOAT engine's binding and dmatest summaries, the
//! --persist daemon's power cycles and the RMP plugin's CPU writes.
//!
//! A port of the checker scripts/run-vm carried, kept until the event-record checker of the ABI
//! crate replaces it (one checker, not two).

use serde_json::Value;

/// One finding, as the runner prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub ok: bool,
    pub text: String,
}

/// The event stream split per session: a --persist daemon ends each with a `power_cycle`.
pub fn sessions(events: &[Value]) -> Vec<Vec<Value>> {
    let mut s: Vec<Vec<Value>> = vec![vec![]];
    for e in events {
        if let Some(last) = s.last_mut() {
            last.push(e.clone());
        }
        if e["type"] == "power_cycle" {
            s.push(vec![]);
        }
    }
    s
}

/// A record's field as the guest's `key=value` compares it: strings bare, case-insensitive,
/// as Python's str() prints the rest (True/False for booleans).
fn field_matches(e: &Value, key: &str, want: &str) -> bool {
    let have = match e.get(key) {
        None | Some(Value::Null) => "None".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => if *b { "True" } else { "False" }.to_string(),
        Some(v) => v.to_string(),
    };
    have.eq_ignore_ascii_case(want)
}

fn matches(e: &Value, ty: &str, want: &[(String, String)]) -> bool {
    e["type"] == ty && want.iter().all(|(k, v)| field_matches(e, k, v))
}

fn pairs(s: &str) -> Vec<(String, String)> {
    s.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// "P passed, F failed[, S skipped]" as the guest's last line.
pub fn result_line(l: &str) -> Option<(u32, u32, u32)> {
    let mut it = l.trim().split(", ");
    let num = |s: Option<&str>, word: &str| s.and_then(|s| s.strip_suffix(word)).and_then(|n| n.trim().parse::<u32>().ok());
    let p = num(it.next(), " passed")?;
    let f = num(it.next(), " failed")?;
    let s = match it.next() {
        None => 0,
        Some(x) => num(Some(x), " skipped")?,
    };
    it.next().is_none().then_some((p, f, s))
}

pub struct Input<'a> {
    pub boots: &'a [Vec<String>],
    pub events: &'a [Value],
    pub cpu_events: &'a [Value],
    pub ioat: bool,
}

pub fn check(inp: &Input) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut say = |ok: bool, text: String| out.push(Finding { ok, text });
    let sessions = sessions(inp.events);
    let nboots = inp.boots.len();
    for (i, b) in inp.boots.iter().enumerate() {
        let w = if nboots > 1 { format!(" (boot {})", i + 1) } else { String::new() };
        let mut mine: Vec<Value> = sessions.get(i).cloned().unwrap_or_default();
        if nboots == 1 {
            mine.extend(inp.cpu_events.iter().cloned());
        }
        match b.iter().rev().find_map(|l| result_line(l)) {
            None => say(false, format!("the guest did not report a result{w}")),
            Some((p, f, _)) => {
                if f > 0 || p == 0 {
                    say(false, format!("the guest reported {p} passed, {f} failed{w}"));
                }
            }
        }
        for l in b {
            let l = l.trim();
            if let Some(rest) = l.strip_prefix("# expect-count ") {
                let mut it = rest.splitn(3, ' ');
                let (Some(n), Some(ty)) = (it.next().and_then(|n| n.parse::<usize>().ok()), it.next()) else { continue };
                let kv = it.next().unwrap_or("");
                let have = mine.iter().filter(|e| matches(e, ty, &pairs(kv))).count();
                say(have >= n, format!("event stream has {have} of {n} {ty} {}{w}", kv.trim()));
            } else if let Some(rest) = l.strip_prefix("# expect-event ") {
                let (ty, kv) = rest.split_once(' ').unwrap_or((rest, ""));
                let found = mine.iter().any(|e| matches(e, ty, &pairs(kv)));
                say(found, format!("event stream {} {ty} {}{w}", if found { "has" } else { "LACKS" }, kv.trim()));
            }
        }
        let dmesg: Vec<&str> = b.iter().filter_map(|l| l.strip_prefix("tiommu-guest: dmesg: ")).collect();
        for l in b {
            if let Some(re) = l.trim().strip_prefix("# expect-dmesg ") {
                match regex::Regex::new(re) {
                    Ok(pat) => {
                        let found = dmesg.iter().any(|d| pat.is_match(d));
                        say(found, format!("guest dmesg {} {re}{w}", if found { "has" } else { "LACKS" }));
                    }
                    Err(e) => say(false, format!("guest asked for dmesg /{re}/, not a regular expression ({e}){w}")),
                }
            }
        }
        if inp.ioat {
            match b.iter().rev().find(|l| l.starts_with("tiommu-guest: 00:06.0 driver ")) {
                Some(l) if l.contains(" driver ioatdma,") => say(true, format!("{}{w}", &l["tiommu-guest: ".len()..])),
                Some(l) => say(false, format!("ioatdma did not bind to the IOAT engine{w}: {l}")),
                None => say(false, format!("ioatdma did not bind to the IOAT engine{w}: no report")),
            }
            for d in &dmesg {
                if ["Self-test", "init failed", "failed to start channel", "Channel halted"].iter().any(|p| d.contains(p)) {
                    say(false, format!("ioatdma: {d}{w}"));
                }
            }
            for l in b.iter().filter(|l| l.starts_with("# dmatest: ") && l.contains("summary")) {
                let ok = l
                    .split_once("summary ")
                    .and_then(|(_, r)| {
                        let mut n = r.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty());
                        Some((n.next()?.parse::<u64>().ok()?, n.next()?.parse::<u64>().ok()?))
                    })
                    .is_some_and(|(tests, failures)| tests > 0 && failures == 0 && l.contains(" tests, ") && l.contains(" failures"));
                say(ok, format!("dmatest{w}: {}", &l["# dmatest: ".len()..]));
            }
        }
    }
    if nboots > 1 {
        let cycles = inp.events.iter().filter(|e| e["type"] == "power_cycle").count();
        say(cycles == nboots, format!("{nboots} boots against one daemon, {cycles} power cycles"));
    }
    // The plugin reports exactly the CPU writes the guest meant to make: none from booting or
    // the other scenarios.
    let want_cpu = inp.boots.iter().flatten().filter(|l| l.trim().starts_with("# expect-event rmp_cpu_violation")).count();
    if inp.cpu_events.len() != want_cpu {
        let mut t = format!("the RMP plugin reported {} CPU writes to assigned pages, the guest expected {want_cpu}", inp.cpu_events.len());
        for e in inp.cpu_events.iter().take(5) {
            t.push_str(&format!("\n  {e}"));
        }
        say(false, t);
    }
    let peak = super::report::peak_rss_kib(inp.events);
    // Bounded: caches and registries have fixed capacities; guest RAM is mapped, not counted
    // unless touched.
    if peak > 1024 * 1024 {
        say(false, format!("the daemon used more than 1 GiB ({} MiB)", peak / 1024));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::report::{peak_rss_kib, split_boots};
    use super::*;
    use serde_json::json;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(String::from).collect()
    }

    #[test]
    fn expected_events_are_found_in_their_own_boot() {
        let boots = split_boots("=== run-vm boot 1\n# expect-event dma status=1 t=false\n1 passed, 0 failed\n=== run-vm boot 2\n# expect-event dma status=2\n1 passed, 0 failed\n");
        assert_eq!(boots.len(), 2);
        let events = [
            json!({"type":"dma","status":1,"t":false}),
            json!({"type":"power_cycle"}),
            json!({"type":"dma","status":1}),
            json!({"type":"power_cycle"}),
        ];
        let f = check(&Input { boots: &boots, events: &events, cpu_events: &[], ioat: false });
        assert!(f.iter().any(|f| f.ok && f.text == "event stream has dma status=1 t=false (boot 1)"), "{f:?}");
        assert!(
            f.iter().any(|f| !f.ok && f.text == "event stream LACKS dma status=2 (boot 2)"),
            "status=2 only in boot 2's session: {f:?}"
        );
        assert!(f.iter().any(|f| f.ok && f.text == "2 boots against one daemon, 2 power cycles"));
    }

    #[test]
    fn counts_results_and_plugin_writes() {
        let b = vec![lines("# expect-count 2 dma len=0x1000\n# expect-event rmp_cpu_violation spa=0x1000\n3 passed, 1 failed, 2 skipped")];
        let events = [json!({"type":"dma","len":"0x1000"}), json!({"type":"daemon_exit","peak_rss_kib":2048})];
        let cpu = [json!({"type":"rmp_cpu_violation","spa":"0x1000"})];
        let f = check(&Input { boots: &b, events: &events, cpu_events: &cpu, ioat: false });
        assert!(f.contains(&Finding { ok: false, text: "event stream has 1 of 2 dma len=0x1000".into() }), "{f:?}");
        assert!(f.contains(&Finding { ok: true, text: "event stream has rmp_cpu_violation spa=0x1000".into() }), "{f:?}");
        assert!(f.contains(&Finding { ok: false, text: "the guest reported 3 passed, 1 failed".into() }), "{f:?}");
        assert!(!f.iter().any(|f| f.text.contains("RMP plugin")), "one write announced, one reported");
        let f = check(&Input { boots: &[lines("1 passed, 0 failed")], events: &[], cpu_events: &cpu, ioat: false });
        assert!(f.iter().any(|f| !f.ok && f.text.starts_with("the RMP plugin reported 1 CPU writes")));
        let f = check(&Input { boots: &[lines("booting...")], events: &[], cpu_events: &[], ioat: false });
        assert_eq!(f, [Finding { ok: false, text: "the guest did not report a result".into() }]);
        assert_eq!(peak_rss_kib(&events), 2048);
    }

    #[test]
    fn ioat_binding_and_dmatest() {
        let b = vec![lines("tiommu-guest: 00:06.0 driver ioatdma, 4 DMA channels, iommu_group 1\n# dmatest: dma0chan0-copy0: summary 100 tests, 0 failures 500 iops\n# dmatest: dma0chan1-copy0: summary 100 tests, 2 failures 500 iops\ntiommu-guest: dmesg: ioatdma 0000:00:06.0: Self-test copy failed compare, disabling\n1 passed, 0 failed")];
        let f = check(&Input { boots: &b, events: &[], cpu_events: &[], ioat: true });
        assert!(f.iter().any(|f| f.ok && f.text.starts_with("00:06.0 driver ioatdma")));
        assert!(f.iter().any(|f| f.ok && f.text.contains("chan0-copy0")));
        assert!(f.iter().any(|f| !f.ok && f.text.contains("chan1-copy0")));
        assert!(f.iter().any(|f| !f.ok && f.text.starts_with("ioatdma: ")));
    }

    #[test]
    fn fields_compare_as_the_python_checker_did() {
        let e = json!({"type":"t","b":true,"n":5,"s":"0xAB","z":null});
        assert!(matches(&e, "t", &pairs("b=true n=5 s=0xab z=None")));
        assert!(!matches(&e, "t", &pairs("b=false")));
        assert!(!matches(&e, "t", &pairs("missing=1")));
    }

    #[test]
    fn result_lines() {
        assert_eq!(result_line("12 passed, 0 failed, 3 skipped"), Some((12, 0, 3)));
        assert_eq!(result_line("  2 passed, 1 failed"), Some((2, 1, 0)));
        assert_eq!(result_line("ok 2 passed, 1 failed"), None);
        assert_eq!(result_line("2 passed, 1 failed, x"), None);
    }
}
