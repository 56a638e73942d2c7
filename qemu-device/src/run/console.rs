//! The serial console as the runner reads it: terminal control sequences the firmware and the
//! kernel send (`ESC c` resets the terminal, `ESC[?7l` turns line wrap off) kept from the user's
//! terminal, and the guest's KTAP lines recognised for the progress lines.

/// Drops `ESC c` and `ESC [ ? 7 l` from a byte stream, across reads; everything else passes
/// (an interactive shell needs its cursor and colour sequences).
#[derive(Default)]
pub struct EscapeFilter {
    held: Vec<u8>,
}

const DROPPED: [&[u8]; 2] = [b"\x1bc", b"\x1b[?7l"];

impl EscapeFilter {
    pub fn feed(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.held.is_empty() && b != 0x1b {
                out.push(b);
                continue;
            }
            self.held.push(b);
            if DROPPED.contains(&self.held.as_slice()) {
                self.held.clear();
            } else if !DROPPED.iter().any(|d| d.starts_with(&self.held)) {
                out.append(&mut self.held);
            }
        }
        out
    }
}

/// What a terminal should be left with after the guest's console: line wrap back on.
pub const RESTORE: &str = "\x1b[?7h";

/// A console line without any terminal control sequence or carriage return (for logs and the
/// line-by-line view).
pub fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut it = line.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\x1b' => match it.next() {
                // CSI: parameters and intermediates up to a final byte in @..~.
                Some('[') => {
                    for c in it.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // Two-character sequences (ESC c, ESC 7, ...) and charset selection (ESC ( B).
                Some('(' | ')') => {
                    it.next();
                }
                _ => {}
            },
            '\r' => {}
            c if c.is_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// A console line as lines: the firmware leaves its last line unterminated ("Booting from
/// ROM.."), so /init's first line can arrive glued to it.
pub fn lines_of(line: String) -> Vec<String> {
    match line.find("tiommu-guest: ") {
        Some(i) if i > 0 => vec![line[..i].to_string(), line[i..].to_string()],
        _ => vec![line],
    }
}

/// A KTAP line of the guest program's.
#[derive(Debug, PartialEq, Eq)]
pub enum Ktap {
    /// "1..N"
    Plan(u32),
    /// "ok N name", "not ok N name # reason"; skipped when the reason starts with SKIP.
    Result { n: u32, name: String, ok: bool, skip: bool, reason: String },
}

/// The first sign of /init on the console: its own lines, or the guest program's KTAP header.
pub fn from_init(line: &str) -> bool {
    line.starts_with("tiommu-guest:") || line.starts_with("KTAP version")
}

pub fn ktap(line: &str) -> Option<Ktap> {
    let l = line.trim();
    if let Some(n) = l.strip_prefix("1..") {
        return n.parse().ok().map(Ktap::Plan);
    }
    let (ok, rest) = match l.strip_prefix("not ok ") {
        Some(r) => (false, r),
        None => (true, l.strip_prefix("ok ")?),
    };
    let (n, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let n: u32 = n.parse().ok()?;
    let (name, reason) = match rest.split_once(" # ") {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (rest.trim(), ""),
    };
    let skip = reason.get(..4).is_some_and(|w| w.eq_ignore_ascii_case("SKIP"));
    let reason = if skip { reason[4..].trim_start_matches(':').trim() } else { reason };
    Some(Ktap::Result { n, name: name.to_string(), ok, skip, reason: reason.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_and_nowrap_never_pass_even_split_across_reads() {
        let mut f = EscapeFilter::default();
        let mut out = f.feed(b"SeaBIOS\x1bcBoot\x1b[?7");
        out.extend(f.feed(b"lok \x1b[1mbold\x1b[0m\x1b"));
        out.extend(f.feed(b"[?7h."));
        assert_eq!(out, b"SeaBIOSBootok \x1b[1mbold\x1b[0m\x1b[?7h.");
    }

    #[test]
    fn plain_lines() {
        assert_eq!(plain("\x1bc\x1b[?7lSeaBIOS (version 1.16)\r"), "SeaBIOS (version 1.16)");
        assert_eq!(plain("a\x1b[0;32mgreen\x1b[0m\x1b(Bb"), "agreenb");
    }

    #[test]
    fn init_lines_glued_to_the_firmware_are_split() {
        assert_eq!(lines_of("Booting from ROM..tiommu-guest: start 3.79".into()), ["Booting from ROM..", "tiommu-guest: start 3.79"]);
        assert_eq!(lines_of("tiommu-guest: start 3.79".into()), ["tiommu-guest: start 3.79"]);
        assert_eq!(lines_of("ok 1 a".into()), ["ok 1 a"]);
    }

    #[test]
    fn ktap_lines() {
        assert_eq!(ktap("1..35"), Some(Ktap::Plan(35)));
        assert_eq!(
            ktap("ok 2 dma_through_4k_and_2m_mappings"),
            Some(Ktap::Result { n: 2, name: "dma_through_4k_and_2m_mappings".into(), ok: true, skip: false, reason: "".into() })
        );
        assert_eq!(
            ktap("not ok 11 virtio_iommu_groups_the_endpoint # no group\r"),
            Some(Ktap::Result {
                n: 11,
                name: "virtio_iommu_groups_the_endpoint".into(),
                ok: false,
                skip: false,
                reason: "no group".into()
            })
        );
        assert!(matches!(ktap("ok 3 x # SKIP not here"), Some(Ktap::Result { skip: true, reason, .. }) if reason == "not here"));
        assert_eq!(ktap("# expect-event dma"), None);
        assert_eq!(ktap("okay"), None);
    }
}
