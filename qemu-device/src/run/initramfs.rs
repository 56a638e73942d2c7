//! The guest's initramfs: busybox, the guest program, /init (init.sh) and the modules the mode
//! needs from the kernel's modules tree, in load order after what each depends on.

use super::cpio;
use std::path::{Path, PathBuf};

pub const INIT: &str = include_str!("init.sh");

pub struct Contents<'a> {
    pub busybox: &'a Path,
    pub guest: &'a Path,
    /// The lib/modules/VERSION tree the modules come from (none: the kernel has them built in).
    pub modules_dir: Option<&'a Path>,
    pub modules: &'a [&'a str],
}

/// What went in, for the progress line and `--keep`.
#[derive(Debug, Default)]
pub struct Built {
    pub archive: Vec<u8>,
    /// Modules packed, in load order.
    pub loaded: Vec<String>,
    /// Modules asked for that the tree does not have (built in, or missing: the scenario that
    /// needs one says so).
    pub not_found: Vec<String>,
}

pub fn build(c: &Contents) -> Result<Built, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let mut w = cpio::Writer::new();
    for d in ["bin", "dev", "proc", "sys", "mnt", "tmp"] {
        w.dir(d)?;
    }
    w.file("bin/busybox", 0o755, &read(c.busybox)?)?;
    w.file("bin/tiommu-guest-tests", 0o755, &read(c.guest)?)?;
    w.file("init", 0o755, INIT.as_bytes())?;
    let mut built = Built::default();
    if let Some(dir) = c.modules_dir {
        let mut files = Vec::new();
        for m in c.modules {
            add_module(dir, m, &mut built, &mut files)?;
        }
        if !built.loaded.is_empty() {
            for (name, bytes) in &files {
                w.file(&format!("lib/modules/{name}.ko"), 0o644, bytes)?;
            }
            w.file("lib/modules/order", 0o644, format!("{}\n", built.loaded.join("\n")).as_bytes())?;
        }
    }
    built.archive = w.finish();
    Ok(built)
}

fn add_module(dir: &Path, name: &str, built: &mut Built, files: &mut Vec<(String, Vec<u8>)>) -> Result<(), String> {
    if built.loaded.iter().any(|m| m == name) || built.not_found.iter().any(|m| m == name) {
        return Ok(());
    }
    let Some(path) = find_module(&dir.join("kernel"), name) else {
        built.not_found.push(name.to_string());
        return Ok(());
    };
    let bytes = decompress(&path)?;
    // What it needs first: the "depends=" field of its .modinfo (the extracted distribution tree
    // has no modules.dep).
    for dep in modinfo(&bytes, "depends").unwrap_or_default().split(',').filter(|d| !d.is_empty()) {
        add_module(dir, dep, built, files)?;
    }
    built.loaded.push(name.to_string());
    files.push((name.to_string(), bytes));
    Ok(())
}

/// NAME.ko or NAME.ko.{xz,zst,gz}, with '_' or '-' in the file name.
fn find_module(dir: &Path, name: &str) -> Option<PathBuf> {
    let names = [name.to_string(), name.replace('_', "-")];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let f = e.file_name().to_string_lossy().into_owned();
            if let Some(stem) = f.split_once(".ko").filter(|(_, rest)| matches!(*rest, "" | ".xz" | ".zst" | ".gz")).map(|(s, _)| s) {
                if names.iter().any(|n| n == stem) {
                    return Some(p);
                }
            }
        }
    }
    None
}

/// A module file decompressed (busybox insmod takes only plain ELF), with the system's xz, zstd
/// or gzip.
fn decompress(p: &Path) -> Result<Vec<u8>, String> {
    let tool = match p.extension().and_then(|e| e.to_str()) {
        Some("xz") => ["xz", "-dc"],
        Some("zst") => ["zstd", "-dcq"],
        Some("gz") => ["gzip", "-dc"],
        _ => return std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display())),
    };
    let out = std::process::Command::new(tool[0])
        .arg(tool[1])
        .arg(p)
        .output()
        .map_err(|e| format!("cannot run {} for {}: {e}", tool[0], p.display()))?;
    if !out.status.success() {
        return Err(format!("{} could not decompress {}: {}", tool[0], p.display(), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(out.stdout)
}

/// A field of a module's .modinfo: NUL-separated "key=value" strings.
pub fn modinfo(ko: &[u8], key: &str) -> Option<String> {
    let pat = format!("{key}=");
    ko.split(|&b| b == 0).find_map(|s| s.strip_prefix(pat.as_bytes())).map(|v| String::from_utf8_lossy(v).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_finds_the_functions_by_the_abi_ids() {
        // Every `0xVVVV:0xDDDD)` case of /init's device scan is a function of abi::pci, and the
        // ones it looks for are there.
        let ids: Vec<&str> =
            INIT.lines().filter_map(|l| l.trim().split_once(") ")).map(|(id, _)| id).filter(|id| id.starts_with("0x")).collect();
        let abi_ids: Vec<String> = abi::pci::FUNCTIONS.iter().map(|(_, f)| format!("{:#06x}:{:#06x}", f.vendor, f.device)).collect();
        assert!(ids.iter().all(|id| abi_ids.iter().any(|a| a == id)), "{ids:?} not all in {abi_ids:?}");
        for f in [abi::pci::SECURE_IOMMU, abi::pci::VIRTIO_IOMMU, abi::pci::IOAT] {
            assert!(ids.contains(&format!("{:#06x}:{:#06x}", f.vendor, f.device).as_str()), "{f:?} missing from /init's scan");
        }
    }

    fn tree() -> tempdir::Dir {
        let t = tempdir::Dir::new("initramfs");
        let k = t.0.join("kernel/drivers/x");
        std::fs::create_dir_all(&k).unwrap();
        std::fs::write(k.join("top.ko"), b"\x7fELF\0license=GPL\0depends=mid,leaf\0vermagic=7\0").unwrap();
        std::fs::write(k.join("mid.ko"), b"\x7fELF\0depends=leaf\0").unwrap();
        std::fs::write(k.join("leaf.ko"), b"\x7fELF\0depends=\0").unwrap();
        std::fs::write(k.join("dash-name.ko"), b"\x7fELF\0").unwrap();
        std::fs::write(t.0.join("busybox"), b"bb").unwrap();
        std::fs::write(t.0.join("guest"), b"guest").unwrap();
        t
    }

    #[test]
    fn modules_follow_what_they_depend_on_once_each() {
        let t = tree();
        let built = build(&Contents {
            busybox: &t.0.join("busybox"),
            guest: &t.0.join("guest"),
            modules_dir: Some(&t.0),
            modules: &["top", "dash_name", "leaf", "absent"],
        })
        .unwrap();
        assert_eq!(built.loaded, ["leaf", "mid", "top", "dash_name"]);
        assert_eq!(built.not_found, ["absent"]);
        let e = cpio::read(&built.archive).unwrap();
        let get = |n: &str| e.iter().find(|e| e.name == n).map(|e| e.data.clone());
        assert_eq!(get("lib/modules/order").unwrap(), b"leaf\nmid\ntop\ndash_name\n");
        assert_eq!(get("bin/tiommu-guest-tests").unwrap(), b"guest");
        assert_eq!(get("init").unwrap(), INIT.as_bytes());
        assert!(get("lib/modules/mid.ko").is_some());
        assert_eq!(e.iter().find(|e| e.name == "init").unwrap().mode, cpio::S_IFREG | 0o755);
    }

    #[test]
    fn no_modules_tree_no_lib_modules() {
        let t = tree();
        let built =
            build(&Contents { busybox: &t.0.join("busybox"), guest: &t.0.join("guest"), modules_dir: None, modules: &["top"] }).unwrap();
        assert!(built.loaded.is_empty());
        assert!(!cpio::read(&built.archive).unwrap().iter().any(|e| e.name.starts_with("lib")));
    }

    #[test]
    fn xz_modules_are_decompressed() {
        let t = tree();
        let k = t.0.join("kernel/drivers/x");
        if std::process::Command::new("xz").arg("-k").arg(k.join("leaf.ko")).status().is_ok_and(|s| s.success()) {
            std::fs::remove_file(k.join("leaf.ko")).unwrap();
            let built =
                build(&Contents { busybox: &t.0.join("busybox"), guest: &t.0.join("guest"), modules_dir: Some(&t.0), modules: &["leaf"] })
                    .unwrap();
            let e = cpio::read(&built.archive).unwrap();
            assert_eq!(e.iter().find(|e| e.name == "lib/modules/leaf.ko").unwrap().data, b"\x7fELF\0depends=\0");
        }
    }

    #[test]
    fn modinfo_fields() {
        assert_eq!(modinfo(b"x\0depends=a,b\0", "depends").as_deref(), Some("a,b"));
        assert_eq!(modinfo(b"x\0srcversion=1\0", "depends"), None);
    }

    /// A directory removed when dropped.
    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new(tag: &str) -> Dir {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p = std::env::temp_dir().join(format!("tiommu-{tag}-{}-{n}", std::process::id()));
                let _ = std::fs::remove_dir_all(&p);
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}
