//! The machine-readable event stream: one JSON object per line, to a file given on the command
//! line, for scripts and CI to assert on. Every record has "type" and "ts" (seconds since start).

use crate::function::EventSink;
use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

pub struct JsonLines {
    out: Mutex<Box<dyn Write + Send>>,
    start: Instant,
}

impl JsonLines {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        JsonLines { out: Mutex::new(out), start: Instant::now() }
    }

    /// Flush and write nothing more: a process exit after this leaves only whole lines.
    pub fn seal(&self) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = out.flush();
        *out = Box::new(std::io::sink());
    }
}

impl EventSink for JsonLines {
    fn emit(&self, mut record: serde_json::Value) {
        if let Some(o) = record.as_object_mut() {
            o.insert("ts".into(), serde_json::json!((self.start.elapsed().as_micros() as f64) / 1e6));
        }
        tracing::info!(target: "tiommu::event", "{record}");
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "{record}");
        let _ = out.flush();
    }
}

/// Collects records in memory, for tests.
#[cfg(test)]
#[derive(Default)]
pub struct Collect(pub Mutex<Vec<serde_json::Value>>);

#[cfg(test)]
impl EventSink for Collect {
    fn emit(&self, record: serde_json::Value) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(record);
    }
}
