//! The machine-readable event stream: one JSON object per line, to a file given on the command
//! line, for scripts and CI to assert on: the records of `abi::event`, each with "type" and "ts"
//! (seconds since the stream was opened at the daemon's start, from the monotonic clock).
//!
//! Bounded, and off the IOMMU's lock: `emit` only queues the record (a bounded channel) for a
//! writer thread, which serializes it into a buffered file and flushes whenever the queue runs
//! dry, and at least every `FLUSH_EVERY` while it does not. Two limits keep a hostile or runaway guest from filling the disk (one doorbell can make
//! 16.8 M refused-page records):
//! - the queue holds `QUEUE` records; a record that finds it full is dropped and counted;
//! - the stream holds `limit` bytes; past that, records are counted, not written.
//!
//! What was dropped is said in the stream itself, by `events_dropped` records (`queue_full`,
//! `limit`) written before the next record that is always kept (the daemon's own `power_cycle`,
//! `partial_attach` and `daemon_exit`) and when the stream is sealed; the first record refused at
//! the limit is preceded by one `events_limit` record. The daemon's log gets a summary of the
//! records by type every `SUMMARY_EVERY` instead of every record (`RUST_LOG=tiommu::event=debug`
//! shows each one).

use crate::vfio::function::EventSink;
use abi::event::{DropReason, Event, EventsDropped, EventsLimit, Record};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Records waiting for the writer. At about 300 bytes a record, 64 MiB at most in memory.
pub const QUEUE: usize = 1 << 16;
/// The default size limit of the stream: a normal run writes well under 1 MiB; a guest flooding
/// refused DMA writes about 2.5 MB/s, so it reaches this in under two minutes.
pub const DEFAULT_LIMIT: u64 = 256 << 20;
/// How often the log gets its summary of the records.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// The longest a written record waits in the writer's buffer while the queue keeps it busy.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Records that are written whatever the limit: few (one per session), and what scripts wait on.
fn always(e: &Event) -> bool {
    matches!(e, Event::PowerCycle(_) | Event::PartialAttach(_) | Event::DaemonExit(_))
}

enum Msg {
    Record(Record),
    /// Write what is pending, flush, write nothing more, then answer.
    Seal(Sender<()>),
}

pub struct JsonLines {
    tx: Sender<Msg>,
    start: Instant,
    /// Records dropped because the queue was full, not yet reported in the stream.
    queue_dropped: std::sync::Arc<AtomicU64>,
    sealed: AtomicBool,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl JsonLines {
    /// A stream with the default size limit.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self::with_limit(out, DEFAULT_LIMIT)
    }

    /// A stream that writes at most about `limit` bytes of records (the records that are always
    /// kept, and the counts of dropped ones, come on top).
    pub fn with_limit(out: Box<dyn Write + Send>, limit: u64) -> Self {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let queue_dropped = std::sync::Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let mut w = Writer {
            start,
            out: std::io::BufWriter::with_capacity(64 << 10, out),
            limit,
            written: 0,
            limit_dropped: 0,
            limit_said: false,
            queue_dropped: queue_dropped.clone(),
            by_type: BTreeMap::new(),
            exit: None,
        };
        let writer = std::thread::Builder::new().name("events".into()).spawn(move || w.run(&rx)).ok();
        JsonLines { tx, start, queue_dropped, sealed: AtomicBool::new(false), writer: Mutex::new(writer) }
    }

    /// Write everything queued so far, flush, and write nothing more: a process exit after this
    /// leaves only whole lines. Waits for the writer for at most 5 s.
    pub fn seal(&self) {
        if self.sealed.swap(true, Ordering::SeqCst) {
            return;
        }
        let (ack, done) = crossbeam_channel::bounded(1);
        if self.tx.send_timeout(Msg::Seal(ack), Duration::from_secs(5)).is_ok() {
            let _ = done.recv_timeout(Duration::from_secs(5));
        }
        if let Some(t) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for JsonLines {
    fn drop(&mut self) {
        self.seal();
    }
}

impl EventSink for JsonLines {
    fn emit(&self, event: Event) {
        let always = always(&event);
        let msg = Msg::Record(Record { event, ts: Some(seconds_since(self.start)) });
        let sent = if always {
            // Wait for room rather than lose a record a script waits on.
            self.tx.send_timeout(msg, Duration::from_secs(5)).is_ok()
        } else {
            match self.tx.try_send(msg) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => false,
                Err(TrySendError::Disconnected(_)) => return,
            }
        };
        if !sent {
            self.queue_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A record's `ts`: seconds, to the microsecond.
fn seconds_since(start: Instant) -> f64 {
    (start.elapsed().as_micros() as f64) / 1e6
}

struct Writer {
    start: Instant,
    out: std::io::BufWriter<Box<dyn Write + Send>>,
    limit: u64,
    written: u64,
    /// Records not written because of the limit, not yet reported.
    limit_dropped: u64,
    limit_said: bool,
    queue_dropped: std::sync::Arc<AtomicU64>,
    /// Records by type since the last summary in the log.
    by_type: BTreeMap<&'static str, u64>,
    /// The daemon_exit record, written last when the stream is sealed (after the counts of
    /// whatever was dropped up to then).
    exit: Option<String>,
}

impl Writer {
    fn run(&mut self, rx: &Receiver<Msg>) {
        let mut last_summary = Instant::now();
        let mut last_flush = Instant::now();
        loop {
            let msg = match rx.try_recv() {
                Ok(m) => Some(m),
                Err(_) => {
                    // The queue ran dry: what was written reaches the file now.
                    let _ = self.out.flush();
                    last_flush = Instant::now();
                    match rx.recv_timeout(SUMMARY_EVERY) {
                        Ok(m) => Some(m),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => {
                            self.finish();
                            return;
                        }
                    }
                }
            };
            match msg {
                Some(Msg::Record(r)) => self.record(r),
                Some(Msg::Seal(ack)) => {
                    self.finish();
                    self.summary();
                    let _ = ack.send(());
                    return;
                }
                None => {}
            }
            // A queue that never runs dry (a flood, even one past the limit whose records are
            // only counted) must not hold written lines back: they reach the file within
            // FLUSH_EVERY.
            if !self.out.buffer().is_empty() && last_flush.elapsed() >= FLUSH_EVERY {
                let _ = self.out.flush();
                last_flush = Instant::now();
            }
            if last_summary.elapsed() >= SUMMARY_EVERY {
                self.summary();
                last_summary = Instant::now();
            }
        }
    }

    /// The last counts, the daemon_exit record if there is one, and a flush.
    fn finish(&mut self) {
        self.report_drops();
        if let Some(line) = self.exit.take() {
            self.write_line(&line);
        }
        let _ = self.out.flush();
    }

    fn record(&mut self, r: Record) {
        let always = always(&r.event);
        // Past the limit a record is counted, not written: not even serialized, so a flood past
        // the limit costs the writer little.
        if !always && self.limit_said {
            self.limit_dropped = self.limit_dropped.saturating_add(1);
            return;
        }
        let ty = r.event.kind();
        // Serialized here, off the emitting thread (which may hold the IOMMU's lock).
        let line = serde_json::to_string(&r).unwrap_or_default();
        tracing::debug!(target: "tiommu::event", "{line}");
        if ty == "daemon_exit" {
            self.exit = Some(line);
            return;
        }
        if always {
            self.report_drops();
        } else if self.queue_dropped.load(Ordering::Relaxed) > 0 {
            // Said now if it fits under the limit; otherwise at the next report, which is
            // written whatever the limit.
            let n = self.queue_dropped.swap(0, Ordering::Relaxed);
            let said = self.line_of(Event::EventsDropped(EventsDropped { reason: DropReason::QueueFull, count: n, limit_bytes: None }));
            if self.written.saturating_add(said.len() as u64).saturating_add(1) <= self.limit {
                self.write_line(&said);
            } else {
                self.queue_dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
        if !always && self.written.saturating_add(line.len() as u64).saturating_add(1) > self.limit {
            if !self.limit_said {
                self.limit_said = true;
                tracing::warn!(
                    "the event stream reached its limit of {} bytes (--events-limit): further records are counted, not written",
                    self.limit
                );
                self.write(Event::EventsLimit(EventsLimit { limit_bytes: self.limit }));
            }
            self.limit_dropped = self.limit_dropped.saturating_add(1);
            return;
        }
        let n = self.by_type.entry(ty).or_default();
        *n = n.saturating_add(1);
        self.write_line(&line);
    }

    /// The counts of records dropped since the last report, as records of their own.
    fn report_drops(&mut self) {
        let q = self.queue_dropped.swap(0, Ordering::Relaxed);
        if q > 0 {
            self.write(Event::EventsDropped(EventsDropped { reason: DropReason::QueueFull, count: q, limit_bytes: None }));
        }
        if self.limit_dropped > 0 {
            let n = std::mem::take(&mut self.limit_dropped);
            tracing::warn!("{n} event records not written: the stream is at its limit of {} bytes", self.limit);
            self.write(Event::EventsDropped(EventsDropped { reason: DropReason::Limit, count: n, limit_bytes: Some(self.limit) }));
        }
    }

    /// One of the writer's own records, as a line.
    fn line_of(&self, event: Event) -> String {
        serde_json::to_string(&Record { event, ts: Some(seconds_since(self.start)) }).unwrap_or_default()
    }

    /// One of the writer's own records.
    fn write(&mut self, event: Event) {
        let line = self.line_of(event);
        self.write_line(&line);
    }

    /// One whole line in one write: the buffer is flushed only between lines, so a reader of the
    /// file never sees half a record.
    fn write_line(&mut self, line: &str) {
        let mut l = String::with_capacity(line.len().saturating_add(1));
        l.push_str(line);
        l.push('\n');
        if self.out.write_all(l.as_bytes()).is_ok() {
            self.written = self.written.saturating_add(line.len() as u64).saturating_add(1);
        }
    }

    /// One line in the log: how many records of each type since the last summary.
    fn summary(&mut self) {
        if self.by_type.is_empty() {
            return;
        }
        let total = self.by_type.values().fold(0u64, |a, &n| a.saturating_add(n));
        let types: Vec<String> = self.by_type.iter().map(|(t, n)| format!("{t}={n}")).collect();
        tracing::info!(target: "tiommu::event", "{total} records ({}), stream at {} bytes", types.join(", "), self.written);
        self.by_type.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A `Write` whose bytes the test can read.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn dma(i: u32) -> Event {
        Event::Dma(abi::event::Dma { index: Some(i), ..Default::default() })
    }

    fn lines(s: &Shared) -> Vec<serde_json::Value> {
        String::from_utf8(s.0.lock().unwrap().clone()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn the_stream_stops_at_its_limit_and_says_how_many_it_dropped() {
        let out = Shared::default();
        let ev = JsonLines::with_limit(Box::new(out.clone()), 4096);
        for i in 0..1000 {
            ev.emit(dma(i));
        }
        ev.emit(Event::DaemonExit(Default::default()));
        ev.seal();
        ev.emit(Event::Snp(Default::default()));
        let got = lines(&out);
        let bytes = out.0.lock().unwrap().len();
        let written = got.iter().filter(|r| r["type"] == "dma").count();
        assert!(written > 20 && written < 1000, "{written} records written");
        let limit = got.iter().position(|r| r["type"] == "events_limit").expect("an events_limit record");
        assert_eq!(limit, written, "right after the last record that fit");
        let dropped: u64 = got.iter().filter(|r| r["type"] == "events_dropped").map(|r| r["count"].as_u64().unwrap()).sum();
        assert_eq!(written as u64 + dropped, 1000, "every record written or counted");
        assert_eq!(got.last().unwrap()["type"], "daemon_exit", "always written, last");
        assert!(bytes < 4096 + 512, "{bytes} bytes");
        assert!(!got.iter().any(|r| r["type"] == "snp"), "nothing after seal");
    }

    #[test]
    fn records_arrive_in_order_with_a_timestamp_and_reach_the_file_when_the_queue_runs_dry() {
        let out = Shared::default();
        let ev = JsonLines::new(Box::new(out.clone()));
        for i in 0..100 {
            ev.emit(dma(i));
        }
        // Flushed without a seal once the writer has caught up.
        let deadline = Instant::now() + Duration::from_secs(5);
        while lines(&out).len() < 100 {
            assert!(Instant::now() < deadline, "the records did not reach the output");
            std::thread::sleep(Duration::from_millis(5));
        }
        let got = lines(&out);
        assert!(got.iter().enumerate().all(|(i, r)| r["index"] == i && r["ts"].is_f64()));
        // Each line is a record of the one type, the ts among its fields.
        let line = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let first: Record = serde_json::from_str(line.lines().next().unwrap()).unwrap();
        assert_eq!(first.event, dma(0));
    }

    #[test]
    fn a_full_queue_drops_records_and_counts_them() {
        // A writer that blocks until released: the queue fills.
        struct Gate(Arc<(Mutex<bool>, std::sync::Condvar)>, Shared);
        impl Write for Gate {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let (m, c) = &*self.0;
                let _g = c.wait_while(m.lock().unwrap(), |open| !*open).unwrap();
                self.1.write(b)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let out = Shared::default();
        // A tiny BufWriter would not block; the writer blocks on its first flush (queue dry).
        let ev = JsonLines::new(Box::new(Gate(gate.clone(), out.clone())));
        ev.emit(Event::Snp(Default::default()));
        std::thread::sleep(Duration::from_millis(100));
        let n = QUEUE + 500;
        for i in 0..n {
            ev.emit(dma(i as u32));
        }
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        ev.seal();
        let got = lines(&out);
        let written = got.iter().filter(|r| r["type"] == "dma").count();
        let dropped: u64 =
            got.iter().filter(|r| r["type"] == "events_dropped" && r["reason"] == "queue_full").map(|r| r["count"].as_u64().unwrap()).sum();
        assert!(dropped >= 500, "{dropped} dropped");
        assert_eq!(written as u64 + dropped, n as u64);
    }
}
