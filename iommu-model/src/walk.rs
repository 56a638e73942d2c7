//! The one page-table walker. Each format (files under `fmt/`) only says what one 64-bit entry at
//! one level means; the walk itself, the address-reach check, level skipping and the bound on the
//! number of reads are written once here (the idea of Linux's drivers/iommu/generic_pt/pt_iter.h).
//!
//! Levels are numbered as the AMD-Vi and VT-d specs do: level 1 holds 4 KiB leaves, a table at
//! level L is indexed by IOVA bits [12 + 9L - 1 : 12 + 9(L - 1)].

use crate::mem::{MemError, PhysMem};
use std::collections::BTreeMap;

/// The deepest table any supported format has (AMD-Vi Mode 6).
pub const MAX_LEVELS: u8 = 6;

/// Read and write permission, ANDed along a walk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Perm {
    pub read: bool,
    pub write: bool,
}

impl Perm {
    pub const NONE: Perm = Perm { read: false, write: false };
    pub const RW: Perm = Perm { read: true, write: true };

    pub fn new(read: bool, write: bool) -> Perm {
        Perm { read, write }
    }

    pub fn and(self, other: Perm) -> Perm {
        Perm { read: self.read && other.read, write: self.write && other.write }
    }

    pub fn allows(self, access: Access) -> bool {
        match access {
            Access::Read => self.read,
            Access::Write => self.write,
        }
    }
}

/// The kind of DMA request being translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    Write,
}

/// What a format says one entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Not present: the walk stops here.
    NotPresent,
    /// Points to a table at `next_level`, which must be below the current level. A level more than
    /// one below skips levels (AMD-Vi v1 allows it; the skipped IOVA bits must then be zero).
    Table { addr: u64, next_level: u8, perm: Perm },
    /// Maps a page of `1 << size_log2` bytes at `addr`.
    Page { addr: u64, size_log2: u8, perm: Perm },
    /// Reserved bits set, or an encoding the format does not allow at this level.
    Invalid,
}

/// A page-table format: the meaning of its entries, nothing else.
pub trait Format {
    fn decode(&self, level: u8, raw: u64) -> Entry;
}

/// Where a walk ends without a translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The IOVA has bits set above what the top level reaches.
    AddressTooHigh,
    NotPresent,
    /// Reserved bits or a bad encoding (AMD-Vi reports it with RZ=1).
    Invalid,
    /// A PDE skipped levels but the IOVA bits of the skipped levels are not zero.
    SkippedBitsNotZero,
    /// The entry could not be read: the table is not in memory.
    Memory(MemError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkFault {
    pub kind: FaultKind,
    /// The level of the table whose entry ended the walk.
    pub level: u8,
    /// The address of that entry, when the walk got as far as computing it.
    pub entry_addr: Option<u64>,
    /// Permission ANDed over the entries read before the one that faulted.
    pub perm: Perm,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    pub spa: u64,
    pub size_log2: u8,
    /// Permission ANDed over every entry of the walk (not yet with the device-table entry's).
    pub perm: Perm,
    /// The level of the leaf.
    pub level: u8,
}

impl Translation {
    pub fn page_size(&self) -> u64 {
        1u64 << self.size_log2
    }
}

/// One entry read during a walk, for tracing and for tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub level: u8,
    pub entry_addr: u64,
    pub raw: u64,
    pub entry: Entry,
}

fn shift(level: u8) -> u32 {
    // Levels are 1..=MAX_LEVELS here (walk_traced checks them before the first call).
    12u32.saturating_add(9u32.saturating_mul(u32::from(level).saturating_sub(1)))
}

fn index(iova: u64, level: u8) -> u64 {
    iova.checked_shr(shift(level)).unwrap_or(0) & 0x1ff
}

/// Translate `iova` through the table at `root`, which is at level `levels` (1..=6).
pub fn walk<F, M>(fmt: &F, mem: &M, root: u64, levels: u8, iova: u64) -> Result<Translation, WalkFault>
where
    F: Format + ?Sized,
    M: PhysMem + ?Sized,
{
    walk_traced(fmt, mem, root, levels, iova, |_| {})
}

/// As [`walk`], calling `trace` with every entry read. At most `levels` entries are read, because
/// each step goes strictly down a level: a table that points at itself ends in a fault, not a loop.
// `levels`, `level` and `next_level` are 1..=MAX_LEVELS (checked on entry and at every table
// entry), `size_log2` below 64: the level arithmetic is bounded. Guest addresses (`root`, `iova`,
// the entries' addresses) only meet masks, shifts by those amounts and one wrapping_add.
#[allow(clippy::arithmetic_side_effects)]
pub fn walk_traced<F, M>(fmt: &F, mem: &M, root: u64, levels: u8, iova: u64, mut trace: impl FnMut(&Step)) -> Result<Translation, WalkFault>
where
    F: Format + ?Sized,
    M: PhysMem + ?Sized,
{
    let mut perm = Perm::RW;
    let fault = |kind, level, entry_addr, perm| Err(WalkFault { kind, level, entry_addr, perm });
    if levels == 0 || levels > MAX_LEVELS {
        return fault(FaultKind::Invalid, levels, None, perm);
    }
    let reach = 12 + 9 * u32::from(levels);
    if reach < 64 && iova >> reach != 0 {
        return fault(FaultKind::AddressTooHigh, levels, None, perm);
    }
    let mut table = root & !0xfff;
    let mut level = levels;
    loop {
        let entry_addr = table.wrapping_add(index(iova, level) * 8);
        let raw = match mem.read_u64(entry_addr) {
            Ok(raw) => raw,
            Err(e) => return fault(FaultKind::Memory(e), level, Some(entry_addr), perm),
        };
        let entry = fmt.decode(level, raw);
        trace(&Step { level, entry_addr, raw, entry });
        match entry {
            Entry::NotPresent => return fault(FaultKind::NotPresent, level, Some(entry_addr), perm),
            Entry::Invalid => return fault(FaultKind::Invalid, level, Some(entry_addr), perm),
            Entry::Page { addr, size_log2, perm: p } => {
                // A leaf at level L maps at least the level's natural size and less than the next
                // level's: anything else is a bad encoding.
                let min = shift(level);
                if u32::from(size_log2) < min || u32::from(size_log2) >= min + 9 || size_log2 > 63 {
                    return fault(FaultKind::Invalid, level, Some(entry_addr), perm);
                }
                let mask = (1u64 << size_log2) - 1;
                return Ok(Translation { spa: (addr & !mask) | (iova & mask), size_log2, perm: perm.and(p), level });
            }
            Entry::Table { addr, next_level, perm: p } => {
                if next_level == 0 || next_level >= level {
                    return fault(FaultKind::Invalid, level, Some(entry_addr), perm);
                }
                if next_level < level - 1 {
                    let skipped = shift(level) - shift(next_level + 1);
                    let bits = (iova >> shift(next_level + 1)) & ((1u64 << skipped) - 1);
                    if bits != 0 {
                        return fault(FaultKind::SkippedBitsNotZero, level, Some(entry_addr), perm);
                    }
                }
                perm = perm.and(p);
                table = addr & !0xfff;
                level = next_level;
            }
        }
    }
}

/// One leaf found by [`find_leaves`]: the IOVA it starts at and what it maps there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    pub iova: u64,
    pub translation: Translation,
}

/// The reverse search ran out of table reads before it had seen every table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetExhausted;

/// Every leaf of the table at `root` (level `levels`) whose page overlaps the physical range
/// `spa`, found by visiting each present table once per path: the question "who
/// can still reach this page" that a conversion to private asks. Each 4 KiB table read costs one
/// unit of `budget`; when it runs out the search stops with `BudgetExhausted` and `out` holds what
/// was found so far. Entries are decoded exactly as [`walk`] decodes them, so a leaf found here is
/// one a walk of its IOVA reaches (permissions ANDed the same way).
pub fn find_leaves<F, M>(
    fmt: &F,
    mem: &M,
    root: u64,
    levels: u8,
    spa: std::ops::Range<u64>,
    budget: &mut u32,
    out: &mut Vec<Leaf>,
) -> Result<(), BudgetExhausted>
where
    F: Format + ?Sized,
    M: PhysMem + ?Sized,
{
    if levels == 0 || levels > MAX_LEVELS || spa.is_empty() {
        return Ok(());
    }
    search(fmt, mem, root & !0xfff, levels, 0, Perm::RW, (spa.start, spa.end), budget, out)
}

/// [`find_leaves`] over the tables of several domains, each searched once for every device that
/// uses it (the devices a device-table or context-entry scan grouped by table root and level
/// count): each device paired with each leaf its table holds. `Err` carries what was found before
/// the budget ran out.
#[allow(clippy::type_complexity)]
pub fn find_leaves_per_table<F, M, D>(
    fmt: &F,
    mem: &M,
    tables: &BTreeMap<(u64, u8), Vec<D>>,
    spa: std::ops::Range<u64>,
    budget: &mut u32,
) -> Result<Vec<(D, Leaf)>, Vec<(D, Leaf)>>
where
    F: Format + ?Sized,
    M: PhysMem + ?Sized,
    D: Copy,
{
    let mut out = Vec::new();
    for (&(root, levels), devices) in tables {
        let mut leaves = Vec::new();
        let r = find_leaves(fmt, mem, root, levels, spa.clone(), budget, &mut leaves);
        out.extend(devices.iter().flat_map(|&d| leaves.iter().map(move |&l| (d, l))));
        if r == Err(BudgetExhausted) {
            return Err(out);
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn search<F, M>(
    fmt: &F,
    mem: &M,
    table: u64,
    level: u8,
    base: u64,
    perm: Perm,
    range: (u64, u64),
    budget: &mut u32,
    out: &mut Vec<Leaf>,
) -> Result<(), BudgetExhausted>
where
    F: Format + ?Sized,
    M: PhysMem + ?Sized,
{
    if *budget == 0 {
        return Err(BudgetExhausted);
    }
    *budget = budget.saturating_sub(1);
    let mut raw = [0u8; 4096];
    // A table outside memory maps nothing a device could reach: a walk through it faults.
    if mem.read(table, &mut raw).is_err() {
        return Ok(());
    }
    for (i, e) in raw.chunks_exact(8).enumerate() {
        let raw = u64::from_le_bytes(e.try_into().unwrap_or([0; 8]));
        let iova = base | (i as u64) << shift(level);
        match fmt.decode(level, raw) {
            Entry::NotPresent | Entry::Invalid => {}
            Entry::Page { addr, size_log2, perm: p } => {
                let min = shift(level);
                if u32::from(size_log2) < min || u32::from(size_log2) >= min.saturating_add(9) || size_log2 > 63 {
                    continue;
                }
                let mask = (1u64 << size_log2).wrapping_sub(1);
                let (start, iova) = (addr & !mask, iova & !mask);
                // A NextLevel-7 page larger than its slot is replicated over several slots (Linux
                // PAGE_SIZE_PTE_COUNT): report it once, from its first slot.
                if out.last().is_some_and(|l| l.iova == iova && l.translation.size_log2 == size_log2) {
                    continue;
                }
                if start < range.1 && start.saturating_add(mask) >= range.0 {
                    out.push(Leaf { iova, translation: Translation { spa: start, size_log2, perm: perm.and(p), level } });
                }
            }
            Entry::Table { addr, next_level, perm: p } => {
                // As `walk`: a table must be lower; a skip leaves the skipped IOVA bits zero.
                if next_level == 0 || next_level >= level {
                    continue;
                }
                search(fmt, mem, addr & !0xfff, next_level, iova, perm.and(p), range, budget, out)?;
            }
        }
    }
    Ok(())
}
