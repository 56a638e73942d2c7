//! The checker of a guest run (`tiommu check`, and the VM runner in-process): the guest's KTAP
//! result of each boot, the records it expects in the event stream, the kernel messages it
//! expects in its dmesg, and a summary of the run (peak memory, counts by type, the faults
//! injected, the commands the driver sent, the launch-to-first-result time).
//!
//! The guest states what it expects on its results port, one line each:
//! - `# expect-event {"type":"hazard","iova":"0x200000"}`: a record of that type whose listed
//!   fields equal these, in its own boot's part of the stream (`abi::expect!` writes them);
//! - `# expect-count N {...}`: at least N such records (nothing lost under load);
//! - `# expect-dmesg REGEX`: a kernel message /init printed after the scenarios matches.
//!
//! Values are compared as the record's types read them: an address in hex or decimal, a status
//! by name (any case) or code, a device as `00:04.0` or `0x20`. An expectation naming a type or
//! field the records do not have, or a value its field cannot hold, is an error, as is a stream
//! line that is not a record.
// An offline tool over the files of a finished run.
#![allow(clippy::arithmetic_side_effects)]

use super::events::{parse_line, Summary};
use abi::event::{Event, Record, KINDS};
use serde_json::{Map, Value};
use std::path::PathBuf;

/// A record the guest expects, its values in the form the stream writes them.
#[derive(Clone, Debug, PartialEq)]
pub struct Expectation {
    pub kind: &'static str,
    pub fields: Map<String, Value>,
    /// As the guest wrote it.
    pub text: String,
}

impl std::fmt::Display for Expectation {
    /// `hazard iova=0x200000 spa=0x300000`: the type, then each field as the stream writes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind)?;
        for (k, v) in &self.fields {
            match v {
                Value::String(s) => write!(f, " {k}={s}")?,
                v => write!(f, " {k}={v}")?,
            }
        }
        Ok(())
    }
}

/// Fields whose value is a map of names the records choose (counts by command name), not a
/// structure whose every key is a field.
const MAPS: &[&str] = &["counts"];

impl Expectation {
    pub fn parse(text: &str) -> Result<Expectation, String> {
        let text = text.trim();
        let v: Value = serde_json::from_str(text).map_err(|e| format!("{text}: not a JSON object: {e}"))?;
        let Value::Object(mut want) = v else { return Err(format!("{text}: not a JSON object")) };
        let ty = match want.remove("type") {
            Some(Value::String(t)) => t,
            _ => return Err(format!("{text}: no \"type\"")),
        };
        let kind = KINDS
            .iter()
            .copied()
            .find(|k| k.eq_ignore_ascii_case(&ty))
            .ok_or_else(|| format!("{text}: no record type {ty:?} (types: {})", KINDS.join(", ")))?;
        // The type's example has every field: the names an expectation may use, and a record to
        // read the expected values into (so each is checked, and written, as its field's type).
        let example = Event::examples().into_iter().find(|e| e.kind() == kind).ok_or("no example")?;
        let Value::Object(mut full) = serde_json::to_value(&example).map_err(|e| e.to_string())? else {
            return Err("an example is not an object".into());
        };
        check_names(kind, "", &want, &full)?;
        merge(&mut full, &want);
        let typed: Event = serde_json::from_value(Value::Object(full)).map_err(|e| format!("{text}: {e}"))?;
        let Value::Object(canon) = serde_json::to_value(&typed).map_err(|e| e.to_string())? else {
            return Err("a record is not an object".into());
        };
        let fields = pick(&canon, &want);
        Ok(Expectation { kind, fields, text: text.to_string() })
    }

    /// Whether `e` has every expected field with the expected value (strings in any case).
    pub fn matches(&self, e: &Event) -> bool {
        e.kind() == self.kind && serde_json::to_value(e).is_ok_and(|v| self.matches_value(&v))
    }

    fn matches_value(&self, v: &Value) -> bool {
        v["type"] == self.kind && self.fields.iter().all(|(k, want)| same(want, v.get(k).unwrap_or(&Value::Null)))
    }
}

/// Every key of `want` is a field of the record (`full`), nested structures included.
fn check_names(kind: &str, at: &str, want: &Map<String, Value>, full: &Map<String, Value>) -> Result<(), String> {
    for (k, v) in want {
        let Some(f) = full.get(k) else {
            let names: Vec<&str> = full.keys().map(String::as_str).filter(|n| *n != "type").collect();
            return Err(format!("{kind} has no field {at}{k:?} (fields: {})", names.join(", ")));
        };
        if let (Value::Object(w), Value::Object(f)) = (v, f) {
            if !MAPS.contains(&k.as_str()) {
                check_names(kind, &format!("{at}{k}."), w, f)?;
            }
        }
    }
    Ok(())
}

/// `want` written over `full`, nested structures key by key.
fn merge(full: &mut Map<String, Value>, want: &Map<String, Value>) {
    for (k, v) in want {
        match (full.get_mut(k), v) {
            (Some(Value::Object(f)), Value::Object(w)) if !MAPS.contains(&k.as_str()) => merge(f, w),
            _ => {
                full.insert(k.clone(), v.clone());
            }
        }
    }
}

/// The keys of `want`, with the values `canon` has for them.
fn pick(canon: &Map<String, Value>, want: &Map<String, Value>) -> Map<String, Value> {
    want.iter()
        .map(|(k, w)| {
            let c = canon.get(k).cloned().unwrap_or(Value::Null);
            let v = match (&c, w) {
                (Value::Object(c), Value::Object(w)) if !MAPS.contains(&k.as_str()) => Value::Object(pick(c, w)),
                _ => c,
            };
            (k.clone(), v)
        })
        .collect()
}

/// Equal, strings in any case, an expected structure's fields a subset of the record's.
fn same(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::String(a), Value::String(b)) => a.eq_ignore_ascii_case(b),
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Object(a), Value::Object(b)) => a.iter().all(|(k, v)| same(v, b.get(k).unwrap_or(&Value::Null))),
        (Value::Array(a), Value::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y)),
        _ => want == got,
    }
}

/// What a run left behind, to be checked.
#[derive(Clone, Debug, Default)]
pub struct Run {
    /// The guest's results port (results.log): KTAP, expectations, dmesg; boots separated by
    /// `=== run-vm boot N` lines.
    pub results: String,
    /// The daemon's event stream.
    pub events: String,
    /// The TCG plugin's stream (empty without the plugin).
    pub cpu_events: String,
    /// The console's lines, each after the host time it arrived (`SECONDS LINE`).
    pub console_ts: String,
    /// Host times (seconds) of the launch and the last power-off.
    pub start: f64,
    pub end: f64,
    /// The IOAT engine was attached: ioatdma must have bound and dmatest passed.
    pub ioat: bool,
}

/// The verdict: what to print, and whether the run passed.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    pub lines: Vec<String>,
    pub ok: bool,
    /// The daemon's records by type (the plugin's included).
    pub summary: Summary,
}

impl Verdict {
    fn say(&mut self, s: impl Into<String>) {
        self.lines.push(s.into());
    }
    fn fail(&mut self, s: impl Into<String>) {
        self.say(s);
        self.ok = false;
    }
}

/// A stream's records; lines that are not records are failures, named by file and line.
fn records(v: &mut Verdict, name: &str, text: &str) -> Vec<Record> {
    let mut out = Vec::new();
    for (n, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        match parse_line(l) {
            Ok(r) => out.push(r),
            Err(e) => v.fail(format!("{name}:{}: not an event record: {e}", n + 1)),
        }
    }
    out
}

/// `N passed, N failed[, N skipped]` (the guest's last line).
fn result_line(l: &str) -> Option<(u64, u64)> {
    let mut parts = l.trim().split(", ");
    let num = |p: Option<&str>, word: &str| p.and_then(|p| p.strip_suffix(word)).and_then(|n| n.parse::<u64>().ok());
    let passed = num(parts.next(), " passed")?;
    let failed = num(parts.next(), " failed")?;
    match parts.next() {
        None => Some((passed, failed)),
        Some(p) if num(Some(p), " skipped").is_some() && parts.next().is_none() => Some((passed, failed)),
        _ => None,
    }
}

pub fn check(run: &Run) -> Verdict {
    let mut v = Verdict { ok: true, ..Default::default() };
    let lines: Vec<&str> = run.results.lines().map(|l| l.trim_end_matches('\r')).collect();
    let events = records(&mut v, "event stream", &run.events);
    let cpu = records(&mut v, "CPU event stream", &run.cpu_events);
    // One results part per boot, one stream session per boot (a --persist daemon ends each with
    // a power_cycle record).
    let mut boots: Vec<Vec<&str>> = vec![Vec::new()];
    for l in &lines {
        if l.starts_with("=== run-vm boot ") {
            boots.push(Vec::new());
        } else if let Some(b) = boots.last_mut() {
            b.push(l);
        }
    }
    if boots.len() > 1 {
        boots.remove(0);
    }
    let mut sessions: Vec<Vec<Value>> = vec![Vec::new()];
    for r in &events {
        if let Some(s) = sessions.last_mut() {
            s.push(serde_json::to_value(&r.event).unwrap_or_default());
        }
        if matches!(r.event, Event::PowerCycle(_)) {
            sessions.push(Vec::new());
        }
    }
    let cpu_values: Vec<Value> = cpu.iter().map(|r| serde_json::to_value(&r.event).unwrap_or_default()).collect();
    let mut cpu_expected = 0usize;
    for (i, b) in boots.iter().enumerate() {
        let at = if boots.len() > 1 { format!(" (boot {})", i + 1) } else { String::new() };
        let mut mine: Vec<&Value> = sessions.get(i).map(|s| s.iter().collect()).unwrap_or_default();
        if boots.len() == 1 {
            mine.extend(cpu_values.iter());
        }
        match b.iter().rev().find_map(|l| result_line(l)) {
            None => v.fail(format!("the guest did not report a result{at}")),
            Some((p, f)) if f > 0 || p == 0 => v.ok = false,
            Some(_) => {}
        }
        let dmesg: Vec<&str> = b.iter().filter_map(|l| l.strip_prefix("tiommu-guest: dmesg: ")).collect();
        for l in b.iter().map(|l| l.trim()) {
            if let Some(rest) = l.strip_prefix("# expect-count ") {
                let (n, x) = rest.split_once(' ').unwrap_or((rest, ""));
                let n: Option<usize> = n.parse().ok();
                match (n, Expectation::parse(x)) {
                    (Some(n), Ok(x)) => {
                        let got = mine.iter().filter(|e| x.matches_value(e)).count();
                        let line = format!("event stream has {got} of {n} {x}{at}");
                        if got >= n {
                            v.say(line);
                        } else {
                            v.fail(line);
                        }
                    }
                    (None, _) => v.fail(format!("bad expectation{at}: {l}")),
                    (_, Err(e)) => v.fail(format!("bad expectation{at}: {e}")),
                }
            } else if let Some(x) = l.strip_prefix("# expect-event ") {
                match Expectation::parse(x) {
                    Ok(x) => {
                        if x.kind == "rmp_cpu_violation" {
                            cpu_expected += 1;
                        }
                        if mine.iter().any(|e| x.matches_value(e)) {
                            v.say(format!("event stream has {x}{at}"));
                        } else {
                            v.fail(format!("event stream LACKS {x}{at}"));
                        }
                    }
                    Err(e) => v.fail(format!("bad expectation{at}: {e}")),
                }
            } else if let Some(re) = l.strip_prefix("# expect-dmesg ") {
                match regex::Regex::new(re) {
                    Ok(r) if dmesg.iter().any(|d| r.is_match(d)) => v.say(format!("guest dmesg has {re}{at}")),
                    Ok(_) => v.fail(format!("guest dmesg LACKS {re}{at}")),
                    Err(e) => v.fail(format!("bad expect-dmesg{at}: {e}")),
                }
            }
        }
        if run.ioat {
            ioat(&mut v, b, &at);
        }
    }
    if boots.len() > 1 {
        let cycles = events.iter().filter(|r| matches!(r.event, Event::PowerCycle(_))).count();
        let line = format!("{} boots against one daemon, {cycles} power cycles", boots.len());
        if cycles == boots.len() {
            v.say(line);
        } else {
            v.fail(line);
        }
    }
    // The plugin reports exactly the CPU writes the guest meant to make: none from booting or
    // the other scenarios.
    if cpu.len() != cpu_expected {
        v.fail(format!("the RMP plugin reported {} CPU writes to assigned pages, the guest expected {cpu_expected}", cpu.len()));
        for r in cpu.iter().take(5) {
            v.say(format!("  {}", serde_json::to_string(r).unwrap_or_default()));
        }
    }
    summarize(&mut v, run, &events, &cpu);
    v
}

/// Linux's ioatdma bound to the engine (its probe's self-test passed, or it would not have), and
/// every dmatest thread that ran on its channels reported 0 failures.
fn ioat(v: &mut Verdict, b: &[&str], at: &str) {
    // /init's report: "tiommu-guest: 00:06.0 driver ioatdma, 2 DMA channels, ..." (the engine's
    // slot is 00:06.0 under tiommu run, wherever else qemu-args --first-slot put it).
    match b.iter().rev().find(|l| l.starts_with("tiommu-guest: ") && l.contains(" driver ") && l.contains(" DMA channels")) {
        Some(l) if l.contains(" driver ioatdma,") => v.say(format!("{}{at}", &l["tiommu-guest: ".len()..])),
        Some(l) => v.fail(format!("ioatdma did not bind to the IOAT engine{at}: {l}")),
        None => v.fail(format!("ioatdma did not bind to the IOAT engine{at}: no report")),
    }
    for d in b.iter().filter_map(|l| l.strip_prefix("tiommu-guest: dmesg: ")) {
        if ["Self-test", "init failed", "failed to start channel", "Channel halted"].iter().any(|w| d.contains(w)) {
            v.fail(format!("ioatdma: {d}{at}"));
        }
    }
    for s in b.iter().filter_map(|l| l.strip_prefix("# dmatest: ")).filter(|s| s.contains("summary")) {
        v.say(format!("dmatest{at}: {s}"));
        let counts = s.split_once("summary ").and_then(|(_, r)| {
            let (tests, rest) = r.split_once(" tests, ")?;
            let failures = rest.split_once(" failures")?.0;
            Some((tests.parse::<u64>().ok()?, failures.parse::<u64>().ok()?))
        });
        if !matches!(counts, Some((t, 0)) if t > 0) {
            v.ok = false;
        }
    }
}

/// The run's figures, from the records and the console's times.
fn summarize(v: &mut Verdict, run: &Run, events: &[Record], cpu: &[Record]) {
    let peak = events
        .iter()
        .filter_map(|r| match &r.event {
            Event::DaemonExit(e) => e.peak_rss_kib,
            Event::PowerCycle(e) => e.peak_rss_kib,
            _ => None,
        })
        .max()
        .unwrap_or(0);
    if peak > 0 {
        v.say(format!("daemon peak memory {:.0} MiB", peak as f64 / 1024.0));
        // Bounded: caches and registries have fixed capacities; guest RAM is mapped, not counted
        // here unless touched, and the whole of it is 512 MiB.
        if peak > 1024 * 1024 {
            v.fail("the daemon used more than 1 GiB");
        }
    }
    v.summary = Summary::of(events.iter().chain(cpu).map(|r| &r.event));
    v.say(format!("daemon events: {}", v.summary));
    let mut injected: std::collections::BTreeMap<&str, u64> = Default::default();
    for r in events {
        if let Event::Injected(e) = &r.event {
            *injected.entry(e.fault.as_str()).or_default() += 1;
        }
    }
    if !injected.is_empty() {
        let list: Vec<String> = injected.iter().map(|(f, n)| format!("{f} x{n}")).collect();
        v.say(format!("faults injected (artificial, marked in the event stream): {}", list.join(", ")));
    }
    for r in events {
        let (what, counts) = match &r.event {
            Event::AmdviCommands(e) => ("AMD-Vi commands the guest sent", &e.counts),
            Event::VtdInvalidations(e) => ("VT-d invalidations the guest made", &e.counts),
            _ => continue,
        };
        if !counts.is_empty() {
            let list: Vec<String> = counts.iter().map(|(k, n)| format!("{k}={n}")).collect();
            v.say(format!("{what}: {}", list.join(", ")));
        }
    }
    // The times, when the caller gave them.
    if run.end > run.start && run.start > 0.0 {
        v.say(format!("{:.1} s from launch to power-off", run.end - run.start));
    }
    let first = run.console_ts.lines().find_map(|l| {
        let (t, line) = l.split_once(' ')?;
        let t: f64 = t.parse().ok()?;
        let l = line.trim_start();
        (l.starts_with("ok 1 ") || l.starts_with("not ok 1 ") || l.contains(" ok 1 ")).then_some(t)
    });
    if let Some(t) = first.filter(|_| run.start > 0.0) {
        v.say(format!("{:.1} s from launch to the first scenario result", t - run.start));
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// The guest's results (its second serial port).
    #[arg(long)]
    pub results: PathBuf,
    /// The daemon's event stream.
    #[arg(long)]
    pub events: PathBuf,
    /// The TCG plugin's stream, if it ran.
    #[arg(long)]
    pub cpu_events: Option<PathBuf>,
    /// The console with each line's host arrival time (`SECONDS LINE`), for the time to the first
    /// result.
    #[arg(long)]
    pub console_ts: Option<PathBuf>,
    /// Host time (seconds since the epoch) of the launch (the run's times are printed when given).
    #[arg(long, default_value_t = 0.0)]
    pub start: f64,
    /// Host time of the last power-off.
    #[arg(long, default_value_t = 0.0)]
    pub end: f64,
    /// The IOAT engine was attached (ioatdma must bind, dmatest must pass).
    #[arg(long)]
    pub ioat: bool,
    /// Put this before each line printed.
    #[arg(long, default_value = "")]
    pub prefix: String,
}

/// `tiommu check`: print the verdict's lines; an error when the run failed.
pub fn run(a: Args) -> Result<(), String> {
    let read = |p: &PathBuf| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    let optional = |p: &Option<PathBuf>| p.as_ref().filter(|p| p.exists()).map(read).transpose().map(Option::unwrap_or_default);
    let r = Run {
        results: read(&a.results)?,
        events: read(&a.events)?,
        cpu_events: optional(&a.cpu_events)?,
        console_ts: optional(&a.console_ts)?,
        start: a.start,
        end: a.end,
        ioat: a.ioat,
    };
    let v = check(&r);
    for l in &v.lines {
        println!("{}{l}", a.prefix);
    }
    if v.ok {
        Ok(())
    } else {
        Err("the run failed (above)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::endpoint::{DmaStatus, Op};
    use abi::event::{Dma, Hazard, PowerCycle, Via};
    use abi::{expect, Bdf};

    fn stream(events: &[Event]) -> String {
        events.iter().map(|e| serde_json::to_string(&Record { event: e.clone(), ts: Some(1.0) }).unwrap() + "\n").collect()
    }

    fn hazard() -> Event {
        Event::Hazard(Hazard {
            spa: 0x30_0000,
            asid: 2,
            devid: Bdf(0x20),
            iova: 0x20_0000,
            size: 4096,
            write: true,
            via: Some(Via::AmdVi),
            domain: Some(3),
        })
    }

    fn fill(n: u32) -> Event {
        Event::Dma(Dma {
            devid: Bdf(0x20),
            index: Some(n),
            op: Some(Op::Fill.into()),
            len: 4096,
            status: DmaStatus::Ok.into(),
            ..Default::default()
        })
    }

    fn run(results: &str, events: &[Event]) -> Verdict {
        check(&Run { results: results.into(), events: stream(events), ..Default::default() })
    }

    #[test]
    fn an_expectation_met_passes_with_typed_values() {
        // Hex or decimal, names in any case, the device as a hex id: the same values.
        for x in [
            expect!(Hazard { iova: 0x20_0000, spa: 0x30_0000, devid: Bdf(0x20) }),
            r#"{"type":"hazard","iova":2097152,"devid":"0x20","via":"AMD-VI"}"#.to_string(),
            r#"{"type":"HAZARD","spa":"3145728","write":true}"#.to_string(),
        ] {
            let v = run(&format!("ok 1 x\n# expect-event {x}\n1 passed, 0 failed\n"), &[hazard()]);
            assert!(v.ok, "{x}: {:?}", v.lines);
            assert!(v.lines.iter().any(|l| l.starts_with("event stream has")), "{:?}", v.lines);
        }
        let x = r#"{"type":"dma","op":2,"status":"ok"}"#;
        let v = run(&format!("# expect-count 2 {x}\n1 passed, 0 failed\n"), &[fill(0), fill(1)]);
        assert!(v.ok, "{:?}", v.lines);
    }

    #[test]
    fn an_expectation_missed_fails() {
        let x = expect!(Hazard { iova: 0x40_0000 });
        let v = run(&format!("# expect-event {x}\n1 passed, 0 failed\n"), &[hazard()]);
        assert!(!v.ok);
        assert!(v.lines.iter().any(|l| l.starts_with("event stream LACKS")), "{:?}", v.lines);
        // A field the record left out is not there to match.
        let v = run("# expect-event {\"type\":\"hazard\",\"via\":\"virtio-iommu\"}\n1 passed, 0 failed\n", &[hazard()]);
        assert!(!v.ok);
        let v = run(&format!("# expect-count 3 {}\n1 passed, 0 failed\n", r#"{"type":"dma","op":"FILL"}"#), &[fill(0), fill(1)]);
        assert!(!v.ok && v.lines.iter().any(|l| l.contains("has 2 of 3")), "{:?}", v.lines);
    }

    #[test]
    fn a_typo_in_a_type_field_or_value_is_an_error() {
        for (x, says) in [
            (r#"{"type":"hazzard","iova":"0x1"}"#, "no record type"),
            (r#"{"type":"hazard","requester":"00:04.0"}"#, "has no field \"requester\""),
            (r#"{"type":"dma","status":"OKK"}"#, "OKK"),
            (r#"{"type":"hazard","iova":"0xzz"}"#, "0xzz"),
            (r#"{"type":"injected_armed","when":{"tmes":1}}"#, "when.\"tmes\""),
            ("hazard iova=0x1", "not a JSON object"),
        ] {
            let e = Expectation::parse(x).unwrap_err();
            assert!(e.contains(says), "{x}: {e}");
            let v = run(&format!("# expect-event {x}\n1 passed, 0 failed\n"), &[hazard()]);
            assert!(!v.ok && v.lines.iter().any(|l| l.starts_with("bad expectation")), "{:?}", v.lines);
        }
    }

    #[test]
    fn a_stream_line_that_is_no_record_fails_with_its_number() {
        let text = stream(&[hazard()]) + "{\"type\":\"dma\",\"devid\":\"nowhere\"}\n";
        let v = check(&Run { results: "1 passed, 0 failed\n".into(), events: text, ..Default::default() });
        assert!(!v.ok);
        assert!(v.lines.iter().any(|l| l.starts_with("event stream:2: not an event record")), "{:?}", v.lines);
    }

    #[test]
    fn each_boot_is_checked_against_its_own_session() {
        let cycle = |n| Event::PowerCycle(PowerCycle { session: n, ..Default::default() });
        let x = expect!(Hazard { iova: 0x20_0000 });
        let results = format!("=== run-vm boot 1\n1 passed, 0 failed\n=== run-vm boot 2\n# expect-event {x}\n1 passed, 0 failed\n");
        // The hazard came in the first session, the second boot expected it: missed.
        let v = run(&results, &[hazard(), cycle(1), cycle(2)]);
        assert!(!v.ok && v.lines.iter().any(|l| l.contains("LACKS") && l.ends_with("(boot 2)")), "{:?}", v.lines);
        let v = run(&results, &[cycle(1), hazard(), cycle(2)]);
        assert!(v.ok, "{:?}", v.lines);
        assert!(v.lines.iter().any(|l| l == "2 boots against one daemon, 2 power cycles"), "{:?}", v.lines);
        // A boot without its result fails.
        let v = run("=== run-vm boot 1\n1 passed, 0 failed\n=== run-vm boot 2\nok 1 x\n", &[cycle(1), cycle(2)]);
        assert!(!v.ok && v.lines.iter().any(|l| l == "the guest did not report a result (boot 2)"), "{:?}", v.lines);
    }

    #[test]
    fn the_runs_figures() {
        let exit = Event::DaemonExit(abi::event::DaemonExit { peak_rss_kib: Some(2 << 20), signal: None });
        let copy = Event::Dma(Dma {
            devid: Bdf(0x20),
            op: Some(Op::Copy.into()),
            len: 1 << 20,
            status: DmaStatus::Ok.into(),
            src: Some(0x6000_0000),
            dst: Some(0x6800_0000),
            ..Default::default()
        });
        let v = check(&Run {
            results: "1 passed, 0 failed\n".into(),
            events: stream(&[copy, exit]),
            start: 10.0,
            end: 12.5,
            ..Default::default()
        });
        assert!(!v.ok, "over 1 GiB");
        for want in [
            "daemon peak memory 2048 MiB",
            "the daemon used more than 1 GiB",
            "daemon events: daemon_exit=1, dma=1",
            "2.5 s from launch to power-off",
        ] {
            assert!(v.lines.iter().any(|l| l == want), "{want:?} not in {:?}", v.lines);
        }
        assert_eq!(v.summary.by_type.get("dma"), Some(&1));
    }

    #[test]
    fn results_failures_dmesg_and_cpu_records() {
        assert!(!run("3 passed, 1 failed\n", &[]).ok);
        assert!(!run("0 passed, 0 failed\n", &[]).ok);
        assert!(run("3 passed, 0 failed, 2 skipped\n", &[]).ok);
        let d = "tiommu-guest: dmesg: [    1.0] AMD-Vi: Using IVHD type 0x11\n";
        assert!(run(&format!("{d}# expect-dmesg AMD-Vi: Using IVHD type 0x1[01]\n1 passed, 0 failed\n"), &[]).ok);
        assert!(!run(&format!("{d}# expect-dmesg DMAR: dmar0\n1 passed, 0 failed\n"), &[]).ok);
        // Every CPU record the plugin wrote was expected, and no more.
        let cpu = Event::examples().into_iter().find(|e| e.kind() == "rmp_cpu_violation").unwrap();
        let x = cpu.expectation(&["spa"]);
        let mk = |results: &str, cpu_events: String| Run { results: results.into(), cpu_events, ..Default::default() };
        let cpu_line = serde_json::to_string(&Record { event: cpu.clone(), ts: None }).unwrap() + "\n";
        assert!(check(&mk(&format!("# expect-event {x}\n1 passed, 0 failed\n"), cpu_line.clone())).ok);
        assert!(!check(&mk("1 passed, 0 failed\n", cpu_line.clone())).ok, "a CPU write nobody expected");
        assert!(!check(&mk(&format!("# expect-event {x}\n1 passed, 0 failed\n"), cpu_line.repeat(2))).ok);
    }
}
