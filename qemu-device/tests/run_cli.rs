//! `tiommu run` end to end with a stand-in for QEMU (a shell script given as --qemu): the real
//! daemon, initramfs and checker, and the summaries a user reads when QEMU fails, hangs, or the
//! guest reports a failure. No QEMU or kernel is needed.

use std::path::{Path, PathBuf};
use std::process::Command;

struct Rig {
    dir: PathBuf,
}

impl Rig {
    fn new(tag: &str) -> Rig {
        let dir = std::env::temp_dir().join(format!("tiommu-run-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A file with a bzImage setup header, a "busybox" and a "guest program": the runner packs
        // them; the stand-in never boots them.
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(dir.join("bzImage"), bz).unwrap();
        std::fs::write(dir.join("busybox"), b"busybox").unwrap();
        std::fs::write(dir.join("guest"), b"guest").unwrap();
        std::fs::write(
            dir.join("env"),
            format!("TIOMMU_QEMU_SYSTEM=''\nTIOMMU_KERNEL='{}'\nTIOMMU_MODULES=''\n", dir.join("bzImage").display()),
        )
        .unwrap();
        Rig { dir }
    }

    /// The stand-in QEMU: `body` runs with $results set to the results port's file.
    fn qemu(&self, body: &str) -> PathBuf {
        let p = self.dir.join("qemu");
        let script = format!(
            "#!/bin/bash\nfor a in \"$@\"; do case $a in file,id=results,path=*) results=${{a#file,id=results,path=}}; results=${{results%%,*}};; esac; done\n{body}\n"
        );
        std::fs::write(&p, script).unwrap();
        Command::new("chmod").arg("+x").arg(&p).status().unwrap();
        p
    }

    fn run(&self, qemu: &Path, extra: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_tiommu"))
            .env("TIOMMU_CACHE", &self.dir)
            .args(["run", "--qemu"])
            .arg(qemu)
            .arg("--busybox")
            .arg(self.dir.join("busybox"))
            .arg("--guest")
            .arg(self.dir.join("guest"))
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_kernel_qemu_cannot_load_is_blamed_on_qemu_not_the_daemon() {
    let r = Rig::new("noload");
    let q = r.qemu("echo 'qemu-system-x86_64: linux kernel too old to load a ram disk' >&2; exit 1");
    let (rc, out, err) = r.run(&q, &[]);
    assert_eq!(rc, 1, "{out}{err}");
    assert!(out.contains("FAILED: QEMU exited with 1 after"), "{out}");
    assert!(out.contains("before the kernel reached /init"), "{out}");
    assert!(out.contains("linux kernel too old to load a ram disk"), "{out}");
    assert!(!out.contains("still running"), "the daemon had no client; not its fault: {out}");
    assert!(err.contains("tiommu run: daemon up"), "{err}");
}

#[test]
fn a_timeout_is_reported_as_one_not_as_a_power_off() {
    let r = Rig::new("timeout");
    let q = r.qemu("echo 'SeaBIOS (version 1.17.0)'; exec sleep 60");
    let t = std::time::Instant::now();
    let (rc, out, _) = r.run(&q, &["--timeout", "1"]);
    assert_eq!(rc, 1);
    assert!(out.contains("FAILED: QEMU did not power off within --timeout 1.0 s (stopped it) before the kernel reached /init"), "{out}");
    assert!(out.contains("SeaBIOS (version 1.17.0)"), "the console's last lines: {out}");
    assert!(!out.contains("launch to power-off"), "{out}");
    assert!(t.elapsed().as_secs() < 20, "the stand-in was stopped");
}

#[test]
fn guest_results_become_the_table_the_json_and_the_verdict() {
    let r = Rig::new("ktap");
    // The console with the firmware's terminal reset and no-wrap, then the guest's KTAP (also on
    // the results port), then power-off; the daemon never had a client, so it is still running.
    let q = r.qemu(
        r#"printf '\033c\033[?7lSeaBIOS\r\n'
{ echo 'tiommu-guest: start 1.00'; echo 'KTAP version 1'; echo '1..3'; echo 'ok 1 first'
  echo '# expect-event {"type":"hazard","iova":"0x200000"}'; echo 'not ok 2 second # wrong bytes'; echo 'ok 3 third # SKIP not here'
  echo '1 passed, 1 failed, 1 skipped'; } | tee -a "$results" | sed 's/$/\r/'
exit 0"#,
    );
    let json = r.dir.join("summary.json");
    let (rc, out, err) = r.run(&q, &["-v", "--json", json.to_str().unwrap(), "--keep", r.dir.join("kept").to_str().unwrap()]);
    assert_eq!(rc, 1, "{out}{err}");
    assert!(!out.contains('\x1b'), "no escape sequence reaches the terminal: {out:?}");
    assert!(out.contains("SeaBIOS"), "-v shows the console: {out}");
    assert!(err.contains("tiommu run: kernel booted, /init running"), "{err}");
    assert!(err.contains("tiommu run: scenario 2 of 3: second: FAILED: wrong bytes"), "{err}");
    assert!(out.contains("  2  second    FAIL"), "{out}");
    assert!(out.contains("1 passed, 1 failed, 1 skipped"), "{out}");
    assert!(out.contains("\nevent stream LACKS hazard"), "the checker's line: {out}");
    assert!(out.contains("FAILED: scenario 2 second failed: wrong bytes"), "{out}");
    assert!(out.contains("FAILED: the daemon was still running 5 s after QEMU exited"), "{out}");
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(j["passed"], false);
    assert_eq!(j["scenarios"].as_array().unwrap().len(), 3);
    assert_eq!(j["scenarios"][1]["result"], "fail");
    assert_eq!(j["scenarios"][2]["result"], "skip");
    assert_eq!(j["event_counts"]["daemon_exit"], 1, "the daemon stopped by SIGTERM wrote its exit record");
    // --keep says where the files went and holds the run's.
    assert!(err.contains(&format!("kept the run's files in {}", r.dir.join("kept").display())), "{err}");
    assert!(r.dir.join("kept/results.log").is_file() && r.dir.join("kept/events.jsonl").is_file());
    assert!(r.dir.join("kept/initramfs.cpio").is_file());
}

#[test]
fn bad_options_and_a_missing_setup_exit_2_with_the_reason() {
    let r = Rig::new("usage");
    let q = r.qemu("exit 0");
    let (rc, _, err) = r.run(&q, &["--kernel"]);
    assert_eq!(rc, 2);
    assert!(err.contains("a value is required for '--kernel <PATH>'"), "{err}");
    let (rc, _, err) = r.run(&q, &["--kernel", r.dir.join("env").to_str().unwrap()]);
    assert_eq!(rc, 2);
    assert!(err.contains("is not a kernel QEMU can boot"), "{err}");
    let (rc, _, err) = r.run(&q, &["--kernel", r.dir.join("bzImage").to_str().unwrap(), "--virtio-iommu"]);
    assert_eq!(rc, 2);
    assert!(err.contains("give --modules DIR, or --modules none"), "{err}");
    std::fs::remove_file(r.dir.join("env")).unwrap();
    let (rc, _, err) = r.run(&q, &[]);
    assert_eq!(rc, 2);
    assert!(err.contains("run 'sudo scripts/setup' first"), "{err}");
}
