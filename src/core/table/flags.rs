//! A slot's flag word: one owner for its bits. Each flag is a line of
//! `Flag` (its bit is its place there); the bits above the last flag count
//! the connections rebalancing closed to the key. The word lives in zones
//! that outlive a module upgrade, so a new flag moves the shed counter:
//! `SHED_SHIFT` is pinned below, and changing it means a new layout
//! (the layout number in `MAGIC`, `header.rs`, with what changed).

use core::sync::atomic::{AtomicU32, Ordering};

/// Defines `Flag` from one list, and `Flag::ALL` with it: a new flag is
/// one line of the list, and the count below then fails to compile until
/// the layout says what changed.
macro_rules! flags {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// The flags of a key, in bit order.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u32)]
        pub enum Flag {
            $($(#[$doc])* $name,)*
        }

        impl Flag {
            /// Every flag, in bit order.
            pub const ALL: &[Flag] = &[$(Flag::$name),*];
        }
    };
}

flags! {
    /// A backup server (configuration).
    Backup,
    /// Marked `down` (configuration).
    Down,
    /// No longer declared: removed once its last connection closes.
    Draining,
    /// Declared from Lua (the C ABI), not by nginx's configuration: reloads
    /// do not sweep it; its `epoch` is the second it was last declared or
    /// picked.
    Lua,
    /// The upstream has `least_conn_persistent_rebalance` (configuration).
    Rebalance,
    /// Run time: the upstream sheds now (rebalancing).
    Shedding,
    /// Health checks, run time: the key takes no new connection (down, or
    /// draining by its capacity answer), as `down`.
    CheckOut,
    /// Health checks, run time: the pick reads the key's health record (an
    /// override of weight or max_conns, or load the server reported).
    CheckTuned,
    /// The upstream has `least_conn_persistent_check` (configuration): its
    /// keys have health records (`health.rs`).
    Checked,
    /// Run time: the key has a leaf in a pick index (`pick_indexes.rs`):
    /// a release updates it.
    Indexed,
}

impl Flag {
    pub const fn bit(self) -> u32 {
        1 << self as u32
    }
}

pub const FLAG_BACKUP: u32 = Flag::Backup.bit();
pub const FLAG_DOWN: u32 = Flag::Down.bit();
pub const FLAG_DRAINING: u32 = Flag::Draining.bit();
pub const FLAG_LUA: u32 = Flag::Lua.bit();
pub const FLAG_REBALANCE: u32 = Flag::Rebalance.bit();
pub const FLAG_CHECKED: u32 = Flag::Checked.bit();

/// The flags a configuration (or Lua) writes, as `Meta::flags`; the rest
/// is run-time state, which a new stamp keeps.
pub const META_FLAGS: u32 =
    FLAG_BACKUP | FLAG_DOWN | FLAG_DRAINING | FLAG_LUA | FLAG_REBALANCE | FLAG_CHECKED;
/// Flags of a key that takes no new connections: a ramp waits for it.
pub const OUT: u32 = FLAG_DOWN | FLAG_DRAINING;
/// The checks' verdicts, as picks read them (`SlotRef::check_bits`).
pub const CHECK_OUT: u32 = Flag::CheckOut.bit();
pub const CHECK_TUNED: u32 = Flag::CheckTuned.bit();
pub const CHECK_BITS: u32 = CHECK_OUT | CHECK_TUNED;

/// Where the shed counter starts: above every flag.
const SHED_SHIFT: u32 = 10;
const _: () = assert!(
    Flag::ALL.len() as u32 == SHED_SHIFT,
    "the flag word changed: move SHED_SHIFT and bump the layout in MAGIC (header.rs)"
);
#[cfg(test)]
pub const SHED_MAX: u32 = u32::MAX >> SHED_SHIFT;

/// The word itself, in a slot. Run-time bits change lock-free (`Shedding`,
/// the shed counter); the configuration's and the checks' under the lock.
#[repr(transparent)]
#[derive(Debug, Default)]
pub struct FlagWord(AtomicU32);

impl FlagWord {
    /// All bits, the shed counter included.
    #[inline(always)]
    pub fn bits(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    #[inline(always)]
    pub fn has(&self, flag: Flag) -> bool {
        self.bits() & flag.bit() != 0
    }

    /// Whether any of `mask` is set.
    #[inline(always)]
    pub fn any(&self, mask: u32) -> bool {
        self.bits() & mask != 0
    }

    /// The configuration's flags (`META_FLAGS`).
    pub fn meta(&self) -> u32 {
        self.bits() & META_FLAGS
    }

    /// The checks' verdicts (`CHECK_BITS`).
    #[inline(always)]
    pub fn check_bits(&self) -> u32 {
        self.bits() & CHECK_BITS
    }

    /// Clears everything: a slot freed, or a key just added.
    pub fn clear(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    /// Marks a key draining, sequentially consistent with the count's read
    /// and `SlotRef::release` (`Table::sweep`).
    pub fn mark_draining(&self) {
        self.0.fetch_or(FLAG_DRAINING, Ordering::SeqCst);
    }

    /// Whether the key drains, read after a release's decrement (SeqCst:
    /// see `mark_draining`).
    pub fn is_draining_after_release(&self) -> bool {
        self.0.load(Ordering::SeqCst) & FLAG_DRAINING != 0
    }

    /// A configuration's flags `meta` (`META_FLAGS`), keeping the run-time
    /// state but what goes with a directive no longer given: the mark of an
    /// upstream that sheds with `least_conn_persistent_rebalance`, the
    /// checks' verdicts with `least_conn_persistent_check`.
    pub fn configure(&self, meta: u32) {
        let mut keep = !META_FLAGS;
        if meta & FLAG_REBALANCE == 0 {
            keep &= !Flag::Shedding.bit();
        }
        if meta & FLAG_CHECKED == 0 {
            keep &= !CHECK_BITS;
        }
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
                Some((f & keep) | (meta & META_FLAGS))
            });
    }

    /// Replaces the checks' verdicts with `bits` (of `CHECK_BITS`); under
    /// the lock.
    pub fn set_check_bits(&self, bits: u32) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
                Some((f & !CHECK_BITS) | bits)
            });
    }

    /// Connections rebalancing closed (wrapping at `SHED_MAX`), and whether
    /// the upstream sheds now.
    pub fn rebalancing(&self) -> (u32, bool) {
        let f = self.bits();
        (f >> SHED_SHIFT, f & Flag::Shedding.bit() != 0)
    }

    /// Counts one connection rebalancing closed; wraps to 0 after
    /// `SHED_MAX`, as a counter that restarts (the flags below stay).
    pub fn add_shed(&self) {
        self.0.fetch_add(1 << SHED_SHIFT, Ordering::Relaxed);
    }

    /// `add_shed`, `n` times at once.
    #[cfg(test)]
    pub fn add_sheds(&self, n: u32) {
        self.0.fetch_add(n << SHED_SHIFT, Ordering::Relaxed);
    }

    /// Sets or clears `Indexed` (under the lock, by a load's indexes).
    pub fn set_indexed(&self, on: bool) {
        let bit = Flag::Indexed.bit();
        if on {
            self.0.fetch_or(bit, Ordering::Relaxed);
        } else {
            self.0.fetch_and(!bit, Ordering::Relaxed);
        }
    }

    /// Sets or clears `Shedding`; true if this call changed it. Read first:
    /// no write to the key's line when nothing changes.
    pub fn set_shedding(&self, on: bool) -> bool {
        let bit = Flag::Shedding.bit();
        if (self.bits() & bit != 0) == on {
            return false;
        }
        let before = if on {
            self.0.fetch_or(bit, Ordering::Relaxed)
        } else {
            self.0.fetch_and(!bit, Ordering::Relaxed)
        };
        (before & bit != 0) != on
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_keep_the_layout_of_zones_already_made() {
        let bits = [
            (Flag::Backup, 1),
            (Flag::Down, 2),
            (Flag::Draining, 4),
            (Flag::Lua, 8),
            (Flag::Rebalance, 16),
            (Flag::Shedding, 32),
            (Flag::CheckOut, 64),
            (Flag::CheckTuned, 128),
            (Flag::Checked, 256),
            (Flag::Indexed, 512),
        ];
        for (flag, bit) in bits {
            assert_eq!(flag.bit(), bit, "{flag:?}");
        }
    }

    #[test]
    fn a_configuration_keeps_run_time_state_of_its_directives_only() {
        let w = FlagWord::default();
        w.configure(FLAG_REBALANCE | FLAG_CHECKED);
        assert!(w.set_shedding(true));
        w.set_check_bits(CHECK_OUT);
        w.add_shed();
        w.configure(FLAG_REBALANCE | FLAG_CHECKED | FLAG_BACKUP);
        assert_eq!(w.rebalancing(), (1, true));
        assert_eq!(w.check_bits(), CHECK_OUT);
        assert_eq!(w.meta(), FLAG_REBALANCE | FLAG_CHECKED | FLAG_BACKUP);
        w.configure(0);
        assert_eq!(w.rebalancing(), (1, false));
        assert_eq!(w.check_bits(), 0);
        assert_eq!(w.meta(), 0);
    }

    #[test]
    fn shedding_reports_only_a_change() {
        let w = FlagWord::default();
        assert!(w.set_shedding(true));
        assert!(!w.set_shedding(true));
        assert!(w.set_shedding(false));
        assert!(!w.set_shedding(false));
    }
}
