//! A kernel with a PVH entry point boots as the vmlinux inside its bzImage: QEMU's x86 loader
//! takes an ELF with the note XEN_ELFNOTE_PHYS32_ENTRY (Xen's include/public/elfnote.h, type 18)
//! straight into guest RAM, where the bzImage would first decompress itself under TCG (about 2 s
//! for the distribution kernel). The vmlinux is taken out of the bzImage once (the boot protocol,
//! Documentation/arch/x86/boot.rst: setup_sects at 0x1f1, payload_offset and payload_length at
//! 0x248, protocol 2.08 or later) and kept in the cache, the newest four.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// XEN_ELFNOTE_PHYS32_ENTRY
const PHYS32_ENTRY: u32 = 18;

/// The vmlinux to boot instead of `bzimage`, from the cache or taken out now; Err says why the
/// bzImage is booted as it is.
pub fn vmlinux(bzimage: &Path, cache: &Path) -> Result<PathBuf, String> {
    let d = std::fs::read(bzimage).map_err(|e| format!("cannot read {}: {e}", bzimage.display()))?;
    let dir = cache.join("pvh");
    let key = super::probe::cache_key(bzimage, &[], &[])?;
    let out = dir.join(format!("{key}.vmlinux"));
    let none = dir.join(format!("{key}.none"));
    if out.is_file() {
        return Ok(out);
    }
    if let Ok(why) = std::fs::read_to_string(&none) {
        return Err(why.trim().to_string());
    }
    let result = extract(&d);
    let _ = std::fs::create_dir_all(&dir);
    match result {
        Ok(elf) => {
            let tmp = dir.join(format!("{key}.tmp{}", std::process::id()));
            std::fs::write(&tmp, &elf)
                .and_then(|()| std::fs::rename(&tmp, &out))
                .map_err(|e| format!("cannot keep the vmlinux in {}: {e}", dir.display()))?;
            prune(&dir, 4);
            Ok(out)
        }
        Err(why) => {
            let _ = std::fs::write(&none, format!("{why}\n"));
            Err(why)
        }
    }
}

/// The ELF inside a bzImage, when it has a PVH entry.
pub fn extract(d: &[u8]) -> Result<Vec<u8>, String> {
    let u16_at = |o: usize| d.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| d.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if d.get(0x202..0x206) != Some(b"HdrS") || u16_at(0x206).is_none_or(|v| v < 0x208) {
        return Err("not a bzImage of boot protocol 2.08 or later".into());
    }
    let sects = match d[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let setup = (sects + 1) * 512;
    let (off, len) = (u32_at(0x248).unwrap_or(0) as usize, u32_at(0x24c).unwrap_or(0) as usize);
    let payload = d.get(setup + off..setup + off + len).ok_or("the payload lies outside the file")?;
    // Every compressor but gzip has the uncompressed size appended (scripts/Makefile.lib
    // size_append), which the tools would take for a second stream.
    let (tool, args, input): (&str, &[&str], &[u8]) = match payload {
        [0x1f, 0x8b, ..] => ("gzip", &["-dc"], payload),
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => ("xz", &["-dc", "--single-stream"], payload),
        [0x5d, 0, 0, ..] => ("xz", &["-dc", "--format=lzma"], &payload[..payload.len().saturating_sub(4)]),
        [b'B', b'Z', b'h', ..] => ("bzip2", &["-dc"], &payload[..payload.len().saturating_sub(4)]),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => ("zstd", &["-dcq"], &payload[..payload.len().saturating_sub(4)]),
        _ => return Err("a payload compression the runner does not take apart".into()),
    };
    let elf = run_filter(tool, args, input)?;
    if has_pvh_note(&elf)? {
        Ok(elf)
    } else {
        Err("no PVH entry point (the kernel is built without CONFIG_PVH)".into())
    }
}

fn run_filter(tool: &str, args: &[&str], input: &[u8]) -> Result<Vec<u8>, String> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {tool} to take the vmlinux out: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let data = input.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let _ = feeder.join();
    if out.stdout.is_empty() || !out.status.success() {
        return Err(format!("{tool} could not decompress the payload: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(out.stdout)
}

/// A 64-bit little-endian ELF with the Xen note PHYS32_ENTRY in a PT_NOTE segment.
pub fn has_pvh_note(elf: &[u8]) -> Result<bool, String> {
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        return Err("the payload is not a 64-bit ELF".into());
    }
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |o: usize| elf.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at = |o: usize| elf.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize);
    let bad = || "a truncated ELF header".to_string();
    let phoff = u64_at(0x20).ok_or_else(bad)?;
    let (phentsize, phnum) = (u16_at(0x36).ok_or_else(bad)?, u16_at(0x38).ok_or_else(bad)?);
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(ph) != Some(4) {
            continue;
        }
        let (mut at, size) = (u64_at(ph + 8).ok_or_else(bad)?, u64_at(ph + 32).ok_or_else(bad)?);
        let end = at + size;
        while at + 12 <= end {
            let (Some(namesz), Some(descsz), Some(ty)) = (u32_at(at), u32_at(at + 4), u32_at(at + 8)) else { break };
            let (namesz, descsz) = (namesz as usize, descsz as usize);
            let name = elf.get(at + 12..at + 12 + namesz).unwrap_or(&[]);
            if name.strip_suffix(&[0]).unwrap_or(name) == b"Xen" && ty == PHYS32_ENTRY {
                return Ok(true);
            }
            at += 12 + namesz.next_multiple_of(4) + descsz.next_multiple_of(4);
        }
    }
    Ok(false)
}

/// Keeps the newest `n` vmlinux files of the cache.
fn prune(dir: &Path, n: usize) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut v: Vec<(std::time::SystemTime, PathBuf)> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "vmlinux"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    v.sort_by_key(|b| std::cmp::Reverse(b.0));
    for (_, p) in v.into_iter().skip(n) {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF-64 with one PT_NOTE segment holding `notes`.
    fn elf(notes: &[(&[u8], u32)]) -> Vec<u8> {
        let mut n = Vec::new();
        for (name, ty) in notes {
            n.extend_from_slice(&(name.len() as u32).to_le_bytes());
            n.extend_from_slice(&4u32.to_le_bytes());
            n.extend_from_slice(&ty.to_le_bytes());
            n.extend_from_slice(name);
            while n.len() % 4 != 0 {
                n.push(0);
            }
            n.extend_from_slice(&[0; 4]);
        }
        let mut e = vec![0u8; 0x40 + 0x38];
        e[..5].copy_from_slice(b"\x7fELF\x02");
        e[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        e[0x40..0x44].copy_from_slice(&4u32.to_le_bytes());
        e[0x48..0x50].copy_from_slice(&(0x78u64).to_le_bytes());
        e[0x60..0x68].copy_from_slice(&(n.len() as u64).to_le_bytes());
        e.extend_from_slice(&n);
        e
    }

    #[test]
    fn the_xen_phys32_entry_note_is_found() {
        assert_eq!(has_pvh_note(&elf(&[(b"Linux\0", 1), (b"Xen\0", 18)])), Ok(true));
        assert_eq!(has_pvh_note(&elf(&[(b"Xen\0", 17), (b"Linux\0", 18)])), Ok(false));
        assert!(has_pvh_note(b"\x7fELF\x01").is_err(), "32-bit");
    }

    #[test]
    fn a_gzip_bzimage_gives_its_elf_back() {
        let inner = elf(&[(b"Xen\0", 18)]);
        let gz = run_filter("gzip", &["-c"], &inner).unwrap();
        // setup_sects 1: the payload starts at 2 * 512 + payload_offset.
        let mut bz = vec![0u8; 1024];
        bz[0x1f1] = 1;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        bz[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        bz[0x24c..0x250].copy_from_slice(&(gz.len() as u32).to_le_bytes());
        bz.extend_from_slice(&[0; 16]);
        bz.extend_from_slice(&gz);
        assert_eq!(extract(&bz), Ok(inner));
        let mut old = bz.clone();
        old[0x206..0x208].copy_from_slice(&0x207u16.to_le_bytes());
        assert!(extract(&old).unwrap_err().contains("2.08"));
        assert!(extract(&bz[..bz.len() - 10]).unwrap_err().contains("outside"));
    }

    #[test]
    fn the_setup_kernels_come_apart() {
        // Where scripts/setup and scripts/build-kernel ran: the distribution kernel (zstd) and the
        // test kernel (gzip) decompress; whether the result has a PVH entry is the config's
        // (the distribution's has CONFIG_PVH, the test kernel's config does not).
        let env = std::fs::read_to_string("/var/cache/tiommu/env").unwrap_or_default();
        let setup = crate::run::Setup::parse(Path::new("/var/cache/tiommu"), &env);
        for k in setup.kernel.into_iter().chain([PathBuf::from("/var/cache/tiommu/test-kernel/bzImage")]) {
            let Ok(d) = std::fs::read(&k) else { continue };
            match extract(&d) {
                Ok(elf) => assert!(elf.len() > d.len() && has_pvh_note(&elf) == Ok(true), "{}", k.display()),
                Err(e) => assert!(e.contains("without CONFIG_PVH"), "{}: {e}", k.display()),
            }
        }
    }
}
