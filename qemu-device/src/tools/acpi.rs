//! The standard ACPI table header (ACPI 6.4 §5.2.6) around the bodies `tiommu viot` and
//! `tiommu ivrs` write. QEMU takes such a file with `-acpitable file=FILE` (header included) and
//! installs it as it is.
// An offline tool: lengths of a table built from the command line.
#![allow(clippy::arithmetic_side_effects)]

pub const HEADER_LEN: usize = 36;

/// `signature`, `revision` and `oem_table_id` framing `body`, with the length and checksum filled
/// in (all bytes of the table sum to zero).
pub fn table(signature: &[u8; 4], revision: u8, oem_table_id: &[u8; 8], body: &[u8]) -> Vec<u8> {
    let len = HEADER_LEN + body.len();
    let mut t = Vec::with_capacity(len);
    t.extend_from_slice(signature);
    t.extend_from_slice(&(len as u32).to_le_bytes());
    t.push(revision);
    t.push(0); // checksum, set below
    t.extend_from_slice(b"TIOMMU"); // OEM ID
    t.extend_from_slice(oem_table_id);
    t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    t.extend_from_slice(b"TIOM"); // creator ID
    t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    t.extend_from_slice(body);
    let sum = t.iter().fold(0u8, |s, &b| s.wrapping_add(b));
    t[9] = 0u8.wrapping_sub(sum);
    t
}
