//! docs/fault-injection.md lists the faults `tiommu inject` arms: its summary table is
//! abi::inject's list (name, unit, help line, in order), and each fault has a row in the tables
//! of its architectural form.

use abi::inject::FaultName;

fn section() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/fault-injection.md");
    let doc = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let start = doc.find("\n## The faults\n").expect("a section \"## The faults\"");
    let body = &doc[start + 1..];
    let end = body[3..].find("\n## ").map_or(body.len(), |i| i + 3);
    body[..end].to_string()
}

/// The cells of each table row whose first cell is a `name` in backquotes.
fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter_map(|l| {
            let inner = l.trim().strip_prefix('|')?.strip_suffix('|')?;
            let cells: Vec<String> = inner.split(" | ").map(|c| c.trim().to_string()).collect();
            cells.first()?.starts_with('`').then_some(cells)
        })
        .collect()
}

#[test]
fn the_summary_table_is_the_enum() {
    let s = section();
    let summary = s.split("| fault | unit | in one line").nth(1).expect("the summary table");
    let summary = &summary[..summary.find("\n\n").unwrap_or(summary.len())];
    let table: Vec<(String, String, String)> =
        rows(summary).into_iter().map(|c| (c[0].trim_matches('`').to_string(), c[1].clone(), c[2].clone())).collect();
    let enum_: Vec<(String, String, String)> =
        FaultName::ALL.iter().map(|f| (f.name().to_string(), f.unit().name().to_string(), f.description().to_string())).collect();
    assert_eq!(table, enum_, "docs/fault-injection.md's summary table and abi::inject::FaultName disagree");
}

#[test]
fn every_fault_has_its_form_described_and_no_other() {
    let s = section();
    let mut described: Vec<String> = rows(&s).into_iter().map(|c| c[0].trim_matches('`').to_string()).collect();
    for f in FaultName::ALL {
        let n = described.iter().filter(|d| *d == f.name()).count();
        assert_eq!(n, 2, "{f}: one row in the summary and one in a table of forms, found {n}");
    }
    described.retain(|d| FaultName::from_name(d).is_none());
    assert!(described.is_empty(), "rows for faults the enum lacks: {described:?}");
}
