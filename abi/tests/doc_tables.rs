//! docs/device-abi.md says what the crate defines: every register, command, call, operation and
//! status there has the crate's number, and every one the crate has is there.

use abi::endpoint::{self, Ctrl, DmaStatus, Op, Status};
use abi::mailbox::{self, Command, SnpCtl};
use abi::tdx::{Call, TdxStatus};

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/device-abi.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The text of the section whose heading starts with `heading`, up to the next heading of the
/// same or a higher level.
fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let level = heading.chars().take_while(|&c| c == '#').count();
    let start = doc.find(&format!("\n{heading}")).unwrap_or_else(|| panic!("no section {heading:?}"));
    let body = &doc[start + 1..];
    let body = &body[body.find('\n').unwrap_or(body.len())..];
    let end = body
        .match_indices("\n#")
        .map(|(i, _)| i)
        .find(|&i| body[i + 1..].chars().take_while(|&c| c == '#').count() <= level)
        .unwrap_or(body.len());
    &body[..end]
}

/// The cells of each table row whose first cell is a number (hex or decimal).
fn rows(text: &str) -> Vec<(u64, Vec<String>)> {
    text.lines()
        .filter_map(|l| {
            let cells: Vec<String> =
                l.trim().strip_prefix('|')?.split(" | ").map(|c| c.trim().trim_end_matches('|').trim().to_string()).collect();
            let n = cells.first()?;
            let v = match n.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).ok()?,
                None => n.parse().ok()?,
            };
            Some((v, cells))
        })
        .collect()
}

/// A table cell that is `name`, or `name` followed by a remark ("PVALIDATE (as the guest of ASID)").
fn names(cell: &str, name: &str) -> bool {
    cell == name || cell.strip_prefix(name).is_some_and(|rest| rest.starts_with(' '))
}

/// Each documented register has the crate's offset, and each register of the crate is
/// documented.
fn registers(section_text: &str, all: &[(&str, u64)], name_cell: usize) {
    let documented: Vec<(u64, String)> = rows(section_text).into_iter().map(|(off, c)| (off, c[name_cell].clone())).collect();
    for (name, off) in all {
        let row = documented.iter().find(|(_, n)| n == name).unwrap_or_else(|| panic!("{name} is not in the table"));
        assert_eq!(row.0, *off, "{name}: the table says {:#x}, the crate {off:#x}", row.0);
    }
    for (off, name) in &documented {
        assert!(all.iter().any(|(n, o)| n == name && o == off), "the table's {name} at {off:#x} is not the crate's");
    }
}

#[test]
fn the_endpoint_registers_bits_operations_and_statuses() {
    let doc = doc();
    let bar0 = section(&doc, "## DMA endpoint: BAR0");
    let bar0 = bar0.split("\n###").next().unwrap_or_default();
    registers(bar0, endpoint::reg::ALL, 2);
    let row = |name: &str| bar0.lines().find(|l| l.contains(&format!("| {name} |"))).unwrap_or_else(|| panic!("no {name} row"));
    for (name, flag) in Status::all().iter_names() {
        assert!(row("STATUS").contains(&format!("bit {} {name}", flag.bits().trailing_zeros())), "STATUS {name}");
    }
    for (name, flag) in Ctrl::all().iter_names() {
        assert!(row("CTRL").contains(&format!("bit {} {name}", flag.bits().trailing_zeros())), "CTRL {name}");
    }
    let desc = section(&doc, "### Descriptor, 32 bytes");
    for op in Op::ALL {
        assert!(desc.contains(&format!("{} {op}", op.code())), "op {op} is not in the descriptor table");
    }
    let table = desc.split("| status | name |").nth(1).expect("the status table");
    let statuses: Vec<(u64, String)> = rows(table).into_iter().map(|(v, c)| (v, c[1].clone())).collect();
    assert_eq!(statuses.len(), DmaStatus::ALL.len(), "the status table: {statuses:?}");
    for (code, name) in statuses {
        assert_eq!(DmaStatus::from_code(code as u16).map(DmaStatus::name), Some(name.as_str()), "status {code}");
    }
}

#[test]
fn the_mailbox_registers_and_commands() {
    let doc = doc();
    let bar2 = section(&doc, "## Secure IOMMU: BAR2, RMP and firmware mailbox");
    let regs = bar2.split("\n###").next().unwrap_or_default();
    registers(regs, mailbox::reg::ALL, 2);
    assert!(regs.contains(&format!("bit {} SNP_EN", SnpCtl::SNP_EN.bits().trailing_zeros())));
    let commands = rows(bar2.split("Commands run synchronously").nth(1).unwrap_or_default());
    for (id, c) in &commands {
        let command = Command::from_code(*id as u32).unwrap_or_else(|| panic!("{id:#x} is no command of the crate"));
        assert!(names(&c[1], command.name()), "{id:#x}: the table says {}, the crate {command}", c[1]);
    }
    // Every command the daemon answers is documented; the firmware's others answer
    // INVALID_COMMAND.
    let unanswered = [
        Command::TioDevStatus,
        Command::TioDevMeasurements,
        Command::TioDevCertificates,
        Command::TioTdiReport,
        Command::TioTdiInfo,
        Command::TioRollKey,
    ];
    for c in Command::ALL {
        let listed = commands.iter().any(|(id, _)| *id == u64::from(c.code()));
        assert_eq!(listed, !unanswered.contains(c), "{c} ({:#x})", c.code());
    }
}

#[test]
fn the_tdx_module_calls_and_statuses() {
    let doc = doc();
    let tdx = section(&doc, "## Secure IOMMU: BAR2 with `tiommu daemon --personality tdx-connect`");
    let calls = rows(tdx);
    for call in Call::ALL {
        let row = calls.iter().find(|(id, _)| *id == u64::from(call.code())).unwrap_or_else(|| panic!("{call} is not in the table"));
        assert!(names(&row.1[1], call.name()), "{:#x}: the table says {}, the crate {call}", call.code(), row.1[1]);
    }
    assert_eq!(calls.len(), Call::ALL.len());
    for s in TdxStatus::ALL {
        let code = if s.code() < 10 { s.code().to_string() } else { format!("{:#x}", s.code()) };
        assert!(tdx.contains(&format!("{code} {s}")), "status {code} {s} is not in the text");
    }
}

#[test]
fn the_functions_ids_classes_and_addresses() {
    let doc = doc();
    let table = section(&doc, "## PCI functions");
    for (name, id) in abi::pci::FUNCTIONS {
        let cells = format!("| {:04x}:{:04x} | {:#08x}", id.vendor, id.device, id.class);
        let row = table.lines().find(|l| l.contains(&cells)).unwrap_or_else(|| panic!("{name}: no row with {cells}"));
        assert!(row.contains(&format!("| {} |", id.bdf)), "{name} is not at {}: {row}", id.bdf);
    }
}
