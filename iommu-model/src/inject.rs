//! Fault injection, the part every unit shares: faults a tool armed, each with the condition under
//! which it fires, asked for at the points where the hardware would fail (a command fetch, a DMA
//! request, ...). Plain data: the daemon arms and clears faults and reads what fired; the unit
//! that owns a point (the AMD-Vi unit here, the daemon's RMP, TDISP and endpoint code) asks
//! [`Injector::fire`] there and does what the fault means. docs/fault-injection.md has the rules.

/// When an armed fault fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct When {
    /// Commands the IOMMU must execute (since the fault was armed, or since it last fired)
    /// before it is due.
    pub after_commands: u64,
    /// DMA requests that must pass before it is due (only those matching `device` and `iova`).
    pub after_dma: u64,
    /// Only DMA requests of this requester count, and the fault fires only at one of them.
    pub device: Option<u16>,
    /// Only DMA requests to this 4 KiB IOVA page count, and the fault fires only at one of them.
    pub iova: Option<u64>,
    /// At each point where it is due, it fires with this probability (parts per million), drawn
    /// from a PRNG seeded with `seed`: the same run fires at the same points.
    pub chance: Option<Chance>,
    /// How many times it fires before it is retired; 0: until cleared.
    pub times: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chance {
    pub per_million: u32,
    pub seed: u64,
}

impl When {
    /// At the first point where the fault can happen, once.
    pub fn now() -> When {
        When { after_commands: 0, after_dma: 0, device: None, iova: None, chance: None, times: 1 }
    }

    fn filtered(&self) -> bool {
        self.device.is_some() || self.iova.is_some()
    }

    fn matches(&self, devid: u16, iova: u64) -> bool {
        self.device.is_none_or(|d| d == devid) && self.iova.is_none_or(|p| p & !0xfff == iova & !0xfff)
    }
}

/// A point where faults are asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    /// The moment a fault is armed (faults due at once fire here).
    Arm,
    /// A command, before it executes (or right after, for faults that need no particular one).
    Command,
    /// A DMA request of `devid` to `iova`, before it is translated.
    Dma { devid: u16, iova: u64 },
}

/// One armed fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Armed<F> {
    pub id: u32,
    pub fault: F,
    pub when: When,
    /// Commands and matching DMA requests seen since it was armed or last fired.
    pub commands: u64,
    pub dma: u64,
    pub fired: u32,
    rng: u64,
}

impl<F> Armed<F> {
    fn due(&self) -> bool {
        self.commands >= self.when.after_commands && self.dma >= self.when.after_dma
    }

    /// splitmix64 (Steele, Lea, Flood 2014): a deterministic stream from the seed.
    fn roll(&mut self) -> bool {
        let Some(c) = self.when.chance else { return true };
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        z % 1_000_000 < u64::from(c.per_million)
    }
}

/// Most faults one unit holds armed at a time.
pub const MAX_ARMED: usize = 64;

/// The armed faults of one unit, in the order they were armed.
#[derive(Clone, Debug)]
pub struct Injector<F> {
    armed: Vec<Armed<F>>,
}

impl<F> Default for Injector<F> {
    fn default() -> Self {
        Injector { armed: Vec::new() }
    }
}

/// Why a fault could not be armed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

impl<F: Clone> Injector<F> {
    pub fn arm(&mut self, id: u32, fault: F, when: When) -> Result<(), Full> {
        if self.armed.len() >= MAX_ARMED {
            return Err(Full);
        }
        let rng = when.chance.map_or(0, |c| c.seed);
        self.armed.push(Armed { id, fault, when, commands: 0, dma: 0, fired: 0, rng });
        Ok(())
    }

    /// Disarm fault `id`, or every fault; the ids removed.
    pub fn clear(&mut self, id: Option<u32>) -> Vec<u32> {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.armed).into_iter().partition(|a| id.is_none_or(|i| a.id == i));
        self.armed = kept;
        gone.into_iter().map(|a| a.id).collect()
    }

    pub fn pending(&self) -> &[Armed<F>] {
        &self.armed
    }

    pub fn is_empty(&self) -> bool {
        self.armed.is_empty()
    }

    /// The faults `accept`ed here that are due and win their draw, in the order armed; each is
    /// counted as fired and retired once it has fired its `times`. A fault with a device or IOVA
    /// filter fires only at a DMA request it matches.
    pub fn fire(&mut self, at: At, accept: impl Fn(&F) -> bool) -> Vec<(u32, F)> {
        self.fire_up_to(at, usize::MAX, accept)
    }

    /// As [`Injector::fire`], at most one: for points where one thing can fail only one way (a
    /// command is illegal or its fetch fails, not both).
    pub fn fire_one(&mut self, at: At, accept: impl Fn(&F) -> bool) -> Option<(u32, F)> {
        self.fire_up_to(at, 1, accept).pop()
    }

    fn fire_up_to(&mut self, at: At, most: usize, accept: impl Fn(&F) -> bool) -> Vec<(u32, F)> {
        // Nothing is armed in almost every run: the common case costs one branch.
        if self.armed.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for a in self.armed.iter_mut() {
            if out.len() >= most {
                break;
            }
            let here = match at {
                At::Dma { devid, iova } => a.when.matches(devid, iova),
                At::Arm | At::Command => !a.when.filtered(),
            };
            if !here || !accept(&a.fault) || !a.due() || !a.roll() {
                continue;
            }
            a.fired = a.fired.saturating_add(1);
            a.commands = 0;
            a.dma = 0;
            out.push((a.id, a.fault.clone()));
        }
        self.armed.retain(|a| a.when.times == 0 || a.fired < a.when.times);
        out
    }

    /// A command executed.
    pub fn count_command(&mut self) {
        self.armed.iter_mut().for_each(|a| a.commands = a.commands.saturating_add(1));
    }

    /// A DMA request passed (counted for the faults whose filters it matches).
    pub fn count_dma(&mut self, devid: u16, iova: u64) {
        for a in self.armed.iter_mut().filter(|a| a.when.matches(devid, iova)) {
            a.dma = a.dma.saturating_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn when() -> When {
        When::now()
    }

    #[test]
    fn now_fires_once_at_the_first_accepting_point() {
        let mut i = Injector::default();
        i.arm(1, 'a', when()).unwrap();
        assert!(i.fire(At::Arm, |&f| f == 'b').is_empty(), "not accepted there");
        assert_eq!(i.fire(At::Command, |_| true), [(1, 'a')]);
        assert!(i.is_empty(), "retired after its one time");
        assert!(i.fire(At::Command, |_| true).is_empty());
    }

    #[test]
    fn after_n_commands_lets_n_pass() {
        let mut i = Injector::default();
        i.arm(7, (), When { after_commands: 3, ..when() }).unwrap();
        for n in 0..3 {
            assert!(i.fire_one(At::Command, |_| true).is_none(), "command {n} passes");
            i.count_command();
        }
        assert_eq!(i.fire_one(At::Command, |_| true), Some((7, ())), "the fourth fails");
    }

    #[test]
    fn after_n_dma_counts_only_matching_requests_and_fires_only_at_them() {
        let mut i = Injector::default();
        i.arm(2, (), When { after_dma: 2, device: Some(0x20), iova: Some(0x5000), ..when() }).unwrap();
        let hit = At::Dma { devid: 0x20, iova: 0x5123 };
        for (devid, iova) in [(0x20, 0x5000), (0x21, 0x5000), (0x20, 0x6000), (0x20, 0x5fff)] {
            assert!(i.fire(At::Dma { devid, iova }, |_| true).is_empty());
            i.count_dma(devid, iova);
        }
        assert!(i.fire(At::Command, |_| true).is_empty(), "a filtered fault fires only at a DMA request");
        assert!(i.fire(At::Dma { devid: 0x21, iova: 0x5000 }, |_| true).is_empty(), "nor at another device's");
        assert_eq!(i.fire(hit, |_| true), [(2, ())], "two matching requests passed: the third fails");
    }

    #[test]
    fn times_and_until_cleared() {
        let mut i = Injector::default();
        i.arm(1, 'x', When { times: 2, after_commands: 1, ..when() }).unwrap();
        i.arm(2, 'y', When { times: 0, ..when() }).unwrap();
        let mut fired = Vec::new();
        for _ in 0..6 {
            fired.extend(i.fire(At::Command, |_| true));
            i.count_command();
        }
        // x: due after one command, then again one command after each firing.
        assert_eq!(fired.iter().filter(|f| f.0 == 1).count(), 2);
        assert_eq!(fired.iter().filter(|f| f.0 == 2).count(), 6, "until cleared: every point");
        assert_eq!(i.pending().len(), 1);
        assert_eq!(i.clear(Some(2)), [2]);
        assert!(i.is_empty());
    }

    #[test]
    fn a_seeded_probability_is_reproducible_and_near_its_rate() {
        let run = |seed| {
            let mut i = Injector::default();
            i.arm(1, (), When { times: 0, chance: Some(Chance { per_million: 250_000, seed }), ..when() }).unwrap();
            (0..4000).map(|_| !i.fire(At::Command, |_| true).is_empty()).collect::<Vec<_>>()
        };
        let (a, b, c) = (run(42), run(42), run(43));
        assert_eq!(a, b, "same seed, same points");
        assert_ne!(a, c, "another seed, other points");
        let n = a.iter().filter(|&&f| f).count();
        assert!((800..1200).contains(&n), "{n} of 4000 at 25%");
        let mut never = Injector::default();
        never.arm(1, (), When { chance: Some(Chance { per_million: 0, seed: 1 }), ..when() }).unwrap();
        assert!((0..100).all(|_| never.fire(At::Arm, |_| true).is_empty()));
    }

    #[test]
    fn fire_one_leaves_the_others_armed_and_the_count_is_bounded() {
        let mut i = Injector::default();
        i.arm(1, 'a', when()).unwrap();
        i.arm(2, 'b', when()).unwrap();
        assert_eq!(i.fire_one(At::Command, |_| true), Some((1, 'a')));
        assert_eq!(i.pending().iter().map(|a| a.id).collect::<Vec<_>>(), [2]);
        for id in 3..=(MAX_ARMED as u32 + 1) {
            i.arm(id, 'c', when()).unwrap();
        }
        assert_eq!(i.arm(99, 'd', when()), Err(Full));
        assert_eq!(i.clear(None).len(), MAX_ARMED);
    }
}
