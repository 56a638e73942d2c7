//! `tiommu events`: an event stream (`tiommu daemon --events FILE`, or the TCG plugin's) read
//! back as one line a person can read per record, filtered by type and device, with the counts
//! by type at the end. `--follow` tails a stream the daemon is still writing, until its
//! `daemon_exit` record or Ctrl-C. The reading, the one-line form and the summary are library
//! functions: the checker and the VM runner use them.
// An offline tool over a file the user names.
#![allow(clippy::arithmetic_side_effects)]

use abi::event::{Event, IoatChannel, Record};
use abi::Bdf;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// The stream: the daemon's --events file or the plugin's events= file ("-": standard input).
    pub file: PathBuf,
    /// Keep reading as the file grows, until the daemon's daemon_exit record (or Ctrl-C).
    #[arg(long, short)]
    pub follow: bool,
    /// Only records of this type (repeatable), such as translation_fault or hazard.
    #[arg(long = "type", short = 't', value_name = "TYPE")]
    pub types: Vec<String>,
    /// Only records about this device (bus:dev.fn, such as 00:04.0, or a hex id such as 0x20).
    #[arg(long, value_name = "BDF")]
    pub device: Option<Bdf>,
    /// Print the records that pass the filters as they are (JSON lines), without the summary.
    #[arg(long)]
    pub json: bool,
}

/// A line of a stream that is not a record.
#[derive(Clone, Debug, PartialEq)]
pub struct BadLine {
    /// 1-based.
    pub line: usize,
    pub error: String,
}

impl std::fmt::Display for BadLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: not an event record: {}", self.line, self.error)
    }
}

/// One line of a stream as a record.
pub fn parse_line(line: &str) -> Result<Record, String> {
    serde_json::from_str(line).map_err(|e| e.to_string())
}

/// Every record of a stream, blank lines skipped; the first line that is not one is an error.
pub fn read_stream(text: &str) -> Result<Vec<Record>, BadLine> {
    let mut out = Vec::new();
    for (n, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        out.push(parse_line(l).map_err(|error| BadLine { line: n + 1, error })?);
    }
    Ok(out)
}

/// How many records of each type.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub by_type: BTreeMap<&'static str, u64>,
}

impl Summary {
    pub fn of<'a>(events: impl IntoIterator<Item = &'a Event>) -> Summary {
        let mut s = Summary::default();
        events.into_iter().for_each(|e| s.add(e));
        s
    }

    pub fn add(&mut self, e: &Event) {
        *self.by_type.entry(e.kind()).or_default() += 1;
    }

    pub fn total(&self) -> u64 {
        self.by_type.values().sum()
    }
}

impl std::fmt::Display for Summary {
    /// `dma=12, hazard=1` (or "none").
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.by_type.is_empty() {
            return f.write_str("none");
        }
        let parts: Vec<String> = self.by_type.iter().map(|(t, n)| format!("{t}={n}")).collect();
        f.write_str(&parts.join(", "))
    }
}

fn yes(b: bool, word: &str) -> String {
    if b {
        format!(" {word}")
    } else {
        String::new()
    }
}

fn opt_hex(label: &str, v: Option<u64>) -> String {
    v.map(|v| format!(" {label} {v:#x}")).unwrap_or_default()
}

/// One line for a person: when, the type, the device, then the record's fields decoded.
pub fn describe(r: &Record) -> String {
    let mut s = match r.ts {
        Some(ts) => format!("{ts:>11.6} "),
        None => format!("{:>11} ", "-"),
    };
    let dev = r.event.devid().map(|d| d.to_string()).unwrap_or_else(|| "-".into());
    let _ = write!(s, "{:<24} {dev:<8} ", r.event.kind());
    let body = match &r.event {
        Event::TranslationFault(e) => {
            let mut b = format!("{} {} IOVA {:#x} via {}", e.event, e.access, e.iova, e.via);
            if let Some(l) = e.level {
                let _ = write!(b, " level {l}");
            }
            let _ = write!(b, " flags {:#x}", e.flags);
            if let (Some(r), Some(d)) = (&e.reason, &e.description) {
                let _ = write!(b, " reason {r} ({d})");
            }
            b + if e.logged { ", logged" } else { ", not logged" } + &yes(e.injected == Some(true), "[injected]")
        }
        Event::VtdInterrupt(e) => format!("{} message to {:#x} data {:#x}", e.event, e.addr, e.data),
        Event::RmpViolation(e) => format!(
            "{} T={} {} IOVA {:#x} SPA {:#x}: {} (flags_rmp {:#x}, vmg_tag {:#x}){}",
            e.event,
            u8::from(e.t),
            e.access,
            e.iova,
            e.spa,
            e.reason,
            e.flags_rmp,
            e.vmg_tag,
            if e.logged { ", logged" } else { ", not logged" }
        ),
        Event::TdxViolation(e) => {
            format!("{} T={} {} IOVA {:#x}{}: {}", e.event, u8::from(e.t), e.access, e.iova, opt_hex("SPA", e.spa), e.reason)
        }
        Event::TdxCall(e) => format!("{} TD {} GPA {:#x}: {}", e.call, e.td, e.gpa, e.status),
        Event::Hazard(e) => {
            let mut b = format!("SPA {:#x} made private for ASID {} while IOVA {:#x} maps it", e.spa, e.asid, e.iova);
            let _ = write!(b, " ({} bytes, {})", e.size, if e.write { "writable" } else { "read-only" });
            if let Some(v) = e.via {
                let _ = write!(b, " in the {v} tables");
            }
            if let Some(d) = e.domain {
                let _ = write!(b, ", domain {d}");
            }
            b
        }
        Event::HazardSearchIncomplete(e) => format!("the table search for SPA {:#x} stopped after {} reads", e.spa, e.budget),
        Event::AmdviCommands(e) => counts(&e.counts),
        Event::VtdInvalidations(e) => counts(&e.counts),
        Event::Rmpupdate(e) => format!(
            "SPA {:#x} -> {} ASID {} GPA {:#x} {}: {}",
            e.spa,
            if e.assigned { "assigned" } else { "hypervisor" },
            e.asid,
            e.gpa,
            page(e.page_size),
            e.status
        ),
        Event::Tdisp(e) => format!("{} -> {} via {}{}", e.from, e.to, e.via, yes(e.injected == Some(true), "[injected]")),
        Event::AsidFence(e) => format!("ASID {} fenced (IOVA {:#x})", e.asid, e.iova),
        Event::Dma(e) => {
            let mut b = String::new();
            if let Some(i) = e.index {
                let _ = write!(b, "#{i} ");
            }
            if let Some(op) = e.op {
                let _ = write!(b, "{op} ");
            }
            if let Some(a) = e.access {
                let _ = write!(b, "{a} ");
            }
            let _ = write!(
                b,
                "{} bytes T={}{}{}{}: {}",
                e.len,
                u8::from(e.t),
                opt_hex("src", e.src),
                opt_hex("dst", e.dst),
                opt_hex("IOVA", e.iova),
                e.status
            );
            if e.status_written == Some(false) {
                b += " (status not written back)";
            }
            b + &yes(e.injected == Some(true), "[injected]")
        }
        Event::DmaHalted(e) => format!("ring halted: {} of descriptor {} at IOVA {:#x}: {}", e.what, e.index, e.iova, e.status),
        Event::IoatHalted(e) => format!(
            "channel {} halted: CHANERR {:#x} {} at IOVA {:#x} (descriptor {:#x}){}",
            e.channel,
            e.chanerr,
            e.error,
            e.iova,
            e.descriptor,
            e.refusal.as_ref().map(|r| format!(": {r}")).unwrap_or_default()
        ),
        Event::IoatReset(e) => match e.channel {
            IoatChannel::All => "function-level reset".into(),
            IoatChannel::One(c) => format!("channel {c} reset"),
        },
        Event::Viommu(e) => {
            let mut b = e.req.to_uppercase();
            if let Some(d) = e.domain {
                let _ = write!(b, " domain {d}");
            }
            if let Some(ep) = e.endpoint {
                let _ = write!(b, " endpoint {ep:#x}");
            }
            if let (Some(s), Some(end)) = (e.virt_start, e.virt_end) {
                let _ = write!(b, " IOVA {s:#x}-{end:#x}");
            }
            b += &opt_hex("-> phys", e.phys_start);
            if let Some(f) = e.flags {
                let _ = write!(b, " flags {f:#x}");
            }
            if let Some(p) = e.pages {
                let _ = write!(b, " ({p} pages)");
            }
            b + &format!(": {}", e.status)
        }
        Event::ViommuFault(e) => format!(
            "{} fault at {:#x} flags {:#x}{}{}",
            e.reason,
            e.address,
            e.flags,
            e.endpoint.map(|ep| format!(" endpoint {ep:#x}")).unwrap_or_default(),
            if e.posted { ", posted" } else { ", no event buffer" }
        ),
        Event::Injected(e) => {
            let mut b = format!("#{} {}: {}", e.id, e.fault, e.effect);
            if let Some(ev) = &e.event {
                let _ = write!(b, "; logged {ev}{}", opt_hex("at", e.address));
            }
            b + &opt_hex("IOVA", e.iova) + &opt_hex("SPA", e.spa)
        }
        Event::InjectedArmed(e) => format!("#{} {} armed ({})", e.id, e.fault, serde_json::to_string(&e.when).unwrap_or_default()),
        Event::InjectedCleared(e) => format!("cleared {:?}", e.ids),
        Event::RmpMirrorMismatch(e) => {
            format!("{} IOVA {:#x} SPA {:#x}: the entry in memory {} differs from the RMP's {}", e.event, e.iova, e.spa, e.memory, e.rmp)
        }
        Event::Snp(e) => match (e.enabled, &e.error) {
            (true, _) => format!("SNP on, RMP of {} pages", e.pages.unwrap_or(0)),
            (false, err) => format!(
                "SNP_EN refused: {}{}{}",
                err.as_deref().unwrap_or("?"),
                opt_hex("RMP_BASE", e.rmp_base),
                opt_hex("RMP_END", e.rmp_end)
            ),
        },
        Event::EventsLimit(e) => format!("the stream reached its limit of {} bytes", e.limit_bytes),
        Event::EventsDropped(e) => format!("{} records dropped ({})", e.count, e.reason),
        Event::PowerCycle(e) => format!(
            "session {} ended{}{}",
            e.session,
            e.error.as_ref().map(|x| format!(" with an error: {x}")).unwrap_or_default(),
            e.peak_rss_kib.map(|k| format!(", peak RSS {} MiB", k / 1024)).unwrap_or_default()
        ),
        Event::PartialAttach(e) => format!("{} left; never attached: {}", e.gone, e.never_attached.join(", ")),
        Event::DaemonExit(e) => format!(
            "daemon exit{}{}",
            e.signal.map(|s| format!(" on signal {s}")).unwrap_or_default(),
            e.peak_rss_kib.map(|k| format!(", peak RSS {} MiB", k / 1024)).unwrap_or_default()
        ),
        Event::RmpCpuViolation(e) => format!(
            "vCPU {} at pc {:#x} wrote {:#x} (SPA {:#x}), error code {:#x}; RMP entry: {} ASID {} GPA {:#x} {}{}{}",
            e.vcpu,
            e.pc,
            e.vaddr,
            e.spa,
            e.error_code,
            if e.rmp.assigned { "assigned" } else { "hypervisor" },
            e.rmp.asid,
            e.rmp.gpa,
            page(e.rmp.page_size),
            yes(e.rmp.validated, "validated"),
            yes(e.rmp.immutable, "immutable"),
        ),
    };
    s + &body
}

fn page(bytes: u64) -> &'static str {
    match bytes {
        0x1000 => "4K",
        0x20_0000 => "2M",
        _ => "?",
    }
}

fn counts(c: &BTreeMap<String, u64>) -> String {
    if c.is_empty() {
        return "none".into();
    }
    c.iter().map(|(k, n)| format!("{k}={n}")).collect::<Vec<_>>().join(", ")
}

/// What `tiommu events` shows of a record, if anything.
fn wanted(a: &Args, e: &Event) -> bool {
    (a.types.is_empty() || a.types.iter().any(|t| t == e.kind())) && a.device.is_none_or(|d| e.devid() == Some(d))
}

pub fn run(a: Args) -> Result<(), String> {
    for t in &a.types {
        if !abi::event::KINDS.contains(&t.as_str()) {
            return Err(format!("--type {t}: no such record type (types: {})", abi::event::KINDS.join(", ")));
        }
    }
    let name = a.file.display().to_string();
    let reader: Box<dyn BufRead> = if name == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(std::fs::File::open(&a.file).map_err(|e| format!("{name}: {e}"))?))
    };
    let stop = Arc::new(AtomicBool::new(false));
    if a.follow {
        let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone());
    }
    let mut out = std::io::stdout().lock();
    let mut summary = Summary::default();
    let mut lines = Lines { reader, follow: a.follow, stop: &stop, partial: String::new() };
    let mut n = 0usize;
    while let Some(line) = lines.next_line().map_err(|e| format!("{name}: {e}"))? {
        n += 1;
        if line.trim().is_empty() {
            continue;
        }
        let r = parse_line(&line).map_err(|error| format!("{name}: {}", BadLine { line: n, error }))?;
        let exit = matches!(r.event, Event::DaemonExit(_));
        if wanted(&a, &r.event) {
            summary.add(&r.event);
            let shown = if a.json { line.trim_end().to_string() } else { describe(&r) };
            if writeln!(out, "{shown}").is_err() {
                return Ok(()); // the reader went (a pipe to head)
            }
        }
        if exit && a.follow {
            break;
        }
    }
    if !a.json {
        let _ = writeln!(out, "{} records: {summary}", summary.total());
    }
    Ok(())
}

/// Whole lines of the stream; following, a line still being written waits for its end.
struct Lines<'a> {
    reader: Box<dyn BufRead + 'a>,
    follow: bool,
    stop: &'a AtomicBool,
    partial: String,
}

impl Lines<'_> {
    fn next_line(&mut self) -> std::io::Result<Option<String>> {
        loop {
            let got = self.reader.read_line(&mut self.partial)?;
            if self.partial.ends_with('\n') {
                return Ok(Some(std::mem::take(&mut self.partial)));
            }
            if got == 0 && (!self.follow || self.stop.load(Ordering::Relaxed)) {
                // The end: a last line without its newline still counts.
                return Ok(Some(std::mem::take(&mut self.partial)).filter(|l| !l.is_empty()));
            }
            if got == 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_type_reads_back_and_has_a_line_of_its_own() {
        let records: Vec<Record> = Event::examples().into_iter().map(|event| Record { event, ts: Some(0.5) }).collect();
        let text: String = records.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
        let back = read_stream(&text).unwrap();
        assert_eq!(back, records);
        for r in &back {
            let line = describe(r);
            assert!(line.contains(r.event.kind()), "{line}");
            if let Some(d) = r.event.devid() {
                assert!(line.contains(&d.to_string()), "{line}");
            }
            assert!(!line.trim_end().ends_with(r.event.kind()), "decoded fields follow: {line}");
        }
        let s = Summary::of(back.iter().map(|r| &r.event));
        assert_eq!((s.total(), s.by_type.len()), (abi::event::KINDS.len() as u64, abi::event::KINDS.len()));
    }

    #[test]
    fn decoded_fields_are_in_the_line() {
        let r = parse_line(r#"{"type":"rmp_cpu_violation","vcpu":0,"pc":"0x1","vaddr":"0x2","spa":"0x200018","error_code":"0x80000003","rmp":{"assigned":true,"asid":2,"gpa":"0x200000","page_size":4096,"immutable":false,"validated":true}}"#).unwrap();
        let line = describe(&r);
        assert!(line.contains("SPA 0x200018") && line.contains("assigned ASID 2 GPA 0x200000 4K validated"), "{line}");
        let r = parse_line(
            r#"{"type":"dma","devid":"00:04.0","index":3,"op":2,"t":false,"len":4096,"status":1,"src":"0x0","dst":"0x5000","ts":1.5}"#,
        )
        .unwrap();
        assert!(describe(&r).contains("#3 FILL 4096 bytes T=0 src 0x0 dst 0x5000: OK"), "{}", describe(&r));
    }

    #[test]
    fn a_line_that_is_no_record_is_named() {
        let text = "{\"type\":\"asid_fence\",\"asid\":1,\"devid\":\"00:04.0\",\"iova\":\"0x0\"}\n\n{\"type\":\"nonsense\"}\n";
        let e = read_stream(text).unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.to_string().contains("nonsense"), "{e}");
    }

    #[test]
    fn filters_by_type_and_device() {
        let a = |types: &[&str], device: Option<Bdf>| Args {
            file: "-".into(),
            follow: false,
            types: types.iter().map(|t| t.to_string()).collect(),
            device,
            json: false,
        };
        let ex = Event::examples();
        let n = |a: &Args| ex.iter().filter(|e| wanted(a, e)).count();
        assert_eq!(n(&a(&[], None)), ex.len());
        assert_eq!(n(&a(&["hazard", "dma"], None)), 2);
        assert_eq!(n(&a(&[], Some(Bdf::new(0, 6, 0)))), 2, "the IOAT's two records");
        assert_eq!(n(&a(&["dma"], Some(Bdf::new(0, 6, 0)))), 0);
    }
}
