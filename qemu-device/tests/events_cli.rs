//! `tiommu events --follow` on a stream that is still being written: it prints each record as its
//! line is completed (a half-written line waits) and stops by itself at the daemon's daemon_exit.

use abi::event::{DaemonExit, Event, Record, Tdisp};
use abi::Bdf;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn line(event: Event) -> String {
    serde_json::to_string(&Record { event, ts: Some(1.0) }).unwrap() + "\n"
}

#[test]
fn follow_prints_records_as_they_are_written_and_stops_at_daemon_exit() {
    let path = std::env::temp_dir().join(format!("tiommu-events-follow-{}.jsonl", std::process::id()));
    let mut file = std::fs::File::create(&path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tiommu"))
        .args(["events", "--follow"])
        .arg(&path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("tiommu events");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });

    let tdisp =
        Event::Tdisp(Tdisp { devid: Bdf::new(0, 4, 0), from: "CONFIG_UNLOCKED".into(), to: "CONFIG_LOCKED".into(), ..Default::default() });
    let record = line(tdisp);
    // Half a line: nothing is printed until its end arrives.
    let (head, tail) = record.split_at(record.len() / 2);
    file.write_all(head.as_bytes()).unwrap();
    file.flush().unwrap();
    assert!(rx.recv_timeout(Duration::from_millis(700)).is_err(), "a half-written line was printed");
    file.write_all(tail.as_bytes()).unwrap();
    file.flush().unwrap();
    let first = rx.recv_timeout(Duration::from_secs(10)).expect("the record, once its line is whole");
    assert!(first.contains("tdisp") && first.contains("00:04.0") && first.contains("CONFIG_LOCKED"), "{first}");

    file.write_all(line(Event::DaemonExit(DaemonExit::default())).as_bytes()).unwrap();
    file.flush().unwrap();
    let mut rest = Vec::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(10)) {
        rest.push(l);
    }
    let status = child.wait().unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(status.success(), "{status}");
    assert!(rest.iter().any(|l| l.contains("daemon_exit")), "{rest:?}");
    assert!(rest.last().is_some_and(|l| l.starts_with("2 records")), "the summary ends the output: {rest:?}");
}
