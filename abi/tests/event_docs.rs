//! docs/device-abi.md's event-stream table names every record type the enum has, and each type's
//! row every field (in backticks), nested ones included; and it names no type the enum lacks.

use abi::event::{Event, KINDS};
use serde_json::Value;

/// The table's rows: the types a row is for (its first cell), and the rest of the row.
fn rows() -> Vec<(Vec<String>, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/device-abi.md");
    let doc = std::fs::read_to_string(path).expect("docs/device-abi.md");
    let start = doc.find("## Event stream").expect("an \"Event stream\" section");
    let section = &doc[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let mut cells = l.trim_matches('|').splitn(2, '|');
            let types = cells.next().unwrap_or("").split(',').map(|t| t.trim().trim_matches('`').to_string()).collect();
            (types, cells.next().unwrap_or("").to_string())
        })
        .collect()
}

/// Every field name of a record, nested structures' as well (not the keys of a map of counts).
fn fields(v: &Value, out: &mut Vec<String>) {
    if let Value::Object(o) = v {
        for (k, x) in o {
            if k == "type" {
                continue;
            }
            out.push(k.clone());
            if k != "counts" {
                fields(x, out);
            }
        }
    }
}

#[test]
fn every_type_and_field_is_documented() {
    let rows = rows();
    let mut missing = Vec::new();
    for e in Event::examples() {
        let Some((_, text)) = rows.iter().find(|(types, _)| types.iter().any(|t| t == e.kind())) else {
            missing.push(format!("type {}", e.kind()));
            continue;
        };
        let mut names = Vec::new();
        fields(&serde_json::to_value(&e).unwrap(), &mut names);
        for f in names {
            if !text.contains(&format!("`{f}`")) {
                missing.push(format!("{}.{f}", e.kind()));
            }
        }
    }
    assert!(missing.is_empty(), "docs/device-abi.md, \"Event stream\", lacks: {}", missing.join(", "));
}

#[test]
fn the_table_names_no_type_the_records_lack() {
    for (types, _) in rows() {
        for t in types {
            assert!(KINDS.contains(&t.as_str()), "docs/device-abi.md documents a record type {t:?} the enum does not have");
        }
    }
}
