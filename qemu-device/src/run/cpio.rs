//! A cpio archive in the "newc" format, the one the kernel unpacks as an initramfs
//! (Documentation/driver-api/early-userspace/buffer-format.rst; init/initramfs.c reads it).
//!
//! Each entry is a 110-byte ASCII header ("070701" and thirteen 8-digit hex fields), the name
//! with its NUL, padding to 4 bytes, the data, padding to 4 bytes; the archive ends with the
//! entry "TRAILER!!!".

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";

/// File type bits of `mode` (stat.h's S_IFDIR, S_IFREG, S_IFLNK).
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;

/// An archive being written into memory.
#[derive(Default)]
pub struct Writer {
    out: Vec<u8>,
    ino: u32,
    names: std::collections::BTreeSet<String>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    /// A directory (mode 0755), and each parent the kernel has not seen yet.
    pub fn dir(&mut self, path: &str) -> Result<(), String> {
        self.parents(path)?;
        self.entry(path, S_IFDIR | 0o755, &[])
    }

    /// A regular file with permission bits `perm` (0o755 for a program), its parents made first.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<(), String> {
        self.parents(path)?;
        self.entry(path, S_IFREG | (perm & 0o7777), data)
    }

    /// A symbolic link `path` -> `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), String> {
        self.parents(path)?;
        self.entry(path, S_IFLNK | 0o777, target.as_bytes())
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.header(TRAILER, 0, 0, 0);
        self.out
    }

    fn parents(&mut self, path: &str) -> Result<(), String> {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let p = &path[..at + i];
            if !p.is_empty() && !self.names.contains(p) {
                self.entry(p, S_IFDIR | 0o755, &[])?;
            }
            at += i + 1;
        }
        Ok(())
    }

    fn entry(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<(), String> {
        // Names are relative ("bin/sh"), as `find . | cpio` writes them without the "./".
        if path.is_empty() || path.starts_with('/') || path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(format!("cpio: '{path}' is not a plain relative path"));
        }
        if path.contains('\0') || path == TRAILER {
            return Err(format!("cpio: '{path}' cannot be a name in the archive"));
        }
        if !self.names.insert(path.to_string()) {
            return Err(format!("cpio: '{path}' is in the archive twice"));
        }
        let size = u32::try_from(data.len()).map_err(|_| format!("cpio: {path} is larger than 4 GiB"))?;
        self.ino = self.ino.wrapping_add(1);
        let nlink = if mode & S_IFDIR == S_IFDIR { 2 } else { 1 };
        self.header(path, mode, nlink, size);
        self.out.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    fn header(&mut self, name: &str, mode: u32, nlink: u32, size: u32) {
        let ino = if name == TRAILER { 0 } else { self.ino };
        let namesize = name.len() as u32 + 1;
        // ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor,
        // namesize, check (0: no checksum in "070701").
        let fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, namesize, 0];
        self.out.extend_from_slice(MAGIC.as_bytes());
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}

/// One entry read back from an archive: name, mode, data. For tests and `--keep`'s listing.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub mode: u32,
    pub data: Vec<u8>,
}

/// Reads a "newc" archive up to its trailer (the inverse of [`Writer`], strict about the format).
pub fn read(mut a: &[u8]) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    let start = a.len();
    loop {
        let at = start - a.len();
        if a.len() < 110 || &a[..6] != MAGIC.as_bytes() {
            return Err(format!("cpio: no newc header at byte {at}"));
        }
        let field = |i: usize| -> Result<usize, String> {
            let s = std::str::from_utf8(&a[6 + 8 * i..14 + 8 * i]).map_err(|_| format!("cpio: bad header at byte {at}"))?;
            usize::from_str_radix(s, 16).map_err(|_| format!("cpio: bad header field '{s}' at byte {at}"))
        };
        let (mode, size, namesize) = (field(1)?, field(6)?, field(11)?);
        let name_end = 110 + namesize;
        let data_start = name_end.next_multiple_of(4);
        let data_end = data_start + size;
        if namesize == 0 || a.len() < data_end || a[name_end - 1] != 0 {
            return Err(format!("cpio: truncated entry at byte {at}"));
        }
        let name = String::from_utf8_lossy(&a[110..name_end - 1]).into_owned();
        if name == TRAILER {
            return Ok(out);
        }
        out.push(Entry { name, mode: mode as u32, data: a[data_start..data_end].to_vec() });
        a = &a[data_end.next_multiple_of(4).min(a.len())..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_and_alignment_are_newc() {
        let mut w = Writer::new();
        w.file("init", 0o755, b"#!/bin/sh\n").unwrap();
        let a = w.finish();
        // 110-byte header, "init\0" (5) padded to 116, 10 bytes of data padded to 128.
        assert_eq!(&a[..6], b"070701");
        assert_eq!(&a[14..22], b"000081ed", "mode: regular file 0755");
        assert_eq!(&a[54..62], b"0000000a", "filesize");
        assert_eq!(&a[94..102], b"00000005", "namesize counts the NUL");
        assert_eq!(&a[110..115], b"init\0");
        assert_eq!(&a[116..126], b"#!/bin/sh\n");
        assert_eq!(a.len() % 4, 0);
        assert_eq!(&a[128..134], b"070701", "the trailer starts on the next 4-byte boundary");
        assert_eq!(&a[128 + 110..128 + 121], b"TRAILER!!!\0");
    }

    #[test]
    fn parents_come_first_once_and_it_reads_back() {
        let mut w = Writer::new();
        w.file("lib/modules/a.ko", 0o644, &[1, 2, 3]).unwrap();
        w.file("lib/modules/order", 0o644, b"a\n").unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.dir("proc").unwrap();
        let e = read(&w.finish()).unwrap();
        let names: Vec<&str> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["lib", "lib/modules", "lib/modules/a.ko", "lib/modules/order", "bin", "bin/sh", "proc"]);
        assert_eq!(e[0].mode, S_IFDIR | 0o755);
        assert_eq!(e[2].data, [1, 2, 3]);
        assert_eq!(e[5].mode, S_IFLNK | 0o777);
        assert_eq!(e[5].data, b"busybox");
    }

    #[test]
    fn bad_names_are_refused() {
        let mut w = Writer::new();
        for bad in ["", "/init", "a/../b", "a//b", "./init", "TRAILER!!!"] {
            assert!(w.file(bad, 0o644, b"").is_err(), "{bad:?}");
        }
        w.file("init", 0o755, b"").unwrap();
        assert!(w.file("init", 0o755, b"").is_err(), "a name twice");
    }

    #[test]
    fn the_system_cpio_reads_what_it_writes() {
        // GNU cpio, where the host has it, as an independent reader of the format.
        let Ok(out) = std::process::Command::new("cpio").arg("--version").output() else { return };
        if !out.status.success() {
            return;
        }
        let mut w = Writer::new();
        w.file("bin/hello", 0o755, b"hello\n").unwrap();
        w.symlink("bin/sh", "hello").unwrap();
        let a = w.finish();
        let mut child = std::process::Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), &a).unwrap();
        drop(child.stdin.take());
        let listing = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
        assert!(listing.lines().any(|l| l.starts_with("drwxr-xr-x") && l.ends_with(" bin")), "{listing}");
        assert!(listing.lines().any(|l| l.starts_with("-rwxr-xr-x") && l.contains(" 6 ") && l.ends_with(" bin/hello")), "{listing}");
        assert!(listing.lines().any(|l| l.starts_with("lrwxrwxrwx") && l.ends_with(" bin/sh -> hello")), "{listing}");
    }
}
