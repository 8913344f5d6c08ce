//! Named crash points: places inside locked sections and multi-step updates
//! of the zone where a test can make the process die, to prove that
//! whatever instant a process dies at leaves the table valid.
//!
//! `point("name")` compiles to nothing unless the crate is built with the
//! `crash-points` feature (never in packages) or under `cargo test`. There
//! it calls the hook the process installed: in nginx (`src/ngx/crash.rs`) a
//! hook that kills the process with SIGKILL at the n-th pass of the point
//! the environment names; under `cargo test` a hook that panics, which the
//! unit tests catch to look at the table a dead process left behind.
//!
//! `POINTS` lists every point; `t/crash_points.t` checks that it names
//! exactly the points in the code, and has a test for each.

/// Every crash point, as `point` is called with it. Keep in step with the
/// code: the tests compare this list with the source.
pub const POINTS: &[&str] = &[
    // table/keys.rs: adding a key
    "insert.claimed",
    "insert.published",
    // table/keys.rs: removing a key
    "remove.retired",
    "remove.unlinked",
    "remove.freeing",
    // table/keys.rs: a new block of slots
    "grow.allocated",
    "grow.linked",
    // table/checks.rs: a block's health records, a check's result
    "health.allocated",
    "health.linked",
    "health.recorded",
    // table/records.rs: a worker's record and cells
    "register.allocated",
    "cell.allocated",
    "reclaim.journalled",
    "reclaim.subtracted",
    "reclaim.unlinked",
    // table/keys.rs: a configuration load's sweep (in the master)
    "sweep.marked",
    // registry.rs: following DNS
    "follow.locked",
    // registry.rs: a Lua declaration
    "lua.declared",
    // shared/zone.rs: the status page's snapshot
    "status.locked",
    // workers.rs: the look for dead workers
    "reclaim.locked",
    // table/pick_indexes.rs: a load's indexes, a pick recorded in one
    "index.entry",
    "index.allocated",
    "index.linked",
    "index.freeing",
    "index.picked",
];

#[cfg(any(test, feature = "crash-points"))]
mod armed {
    use core::sync::atomic::{AtomicUsize, Ordering};

    /// The hook, as a `fn(&'static str)` cast to usize; 0: none.
    static HOOK: AtomicUsize = AtomicUsize::new(0);

    #[cfg(test)]
    std::thread_local! {
        /// Under `cargo test` each test thread has its own hook, so tests
        /// that crash do not disturb tests running beside them.
        pub static TEST_HOOK: core::cell::Cell<Option<fn(&'static str)>> =
            const { core::cell::Cell::new(None) };
    }

    pub fn set_hook(hook: fn(&'static str)) {
        HOOK.store(hook as usize, Ordering::Release);
    }

    #[inline(never)]
    pub fn hit(name: &'static str) {
        #[cfg(test)]
        if let Some(hook) = TEST_HOOK.with(|h| h.get()) {
            return hook(name);
        }
        let hook = HOOK.load(Ordering::Acquire);
        if hook != 0 {
            // SAFETY: only `set_hook` stores here, a `fn(&'static str)`.
            let hook: fn(&'static str) = unsafe { core::mem::transmute(hook) };
            hook(name);
        }
    }
}

#[cfg(any(test, feature = "crash-points"))]
pub use armed::set_hook;
#[cfg(test)]
pub(crate) use armed::TEST_HOOK;

/// A place where a test may make the process die (module docs).
#[inline(always)]
pub fn point(name: &'static str) {
    #[cfg(any(test, feature = "crash-points"))]
    armed::hit(name);
    let _ = name;
}

#[cfg(test)]
pub(crate) mod testing {
    use super::TEST_HOOK;
    use std::cell::Cell;

    std::thread_local! {
        static TARGET: Cell<Option<(&'static str, u32)>> = const { Cell::new(None) };
        static HIT: Cell<bool> = const { Cell::new(false) };
    }

    /// The payload of the panic that stands for a death at a point.
    #[derive(Debug)]
    pub struct Died;

    fn panic_at_target(name: &'static str) {
        TARGET.with(|t| {
            if let Some((target, n)) = t.get() {
                if target == name {
                    if n <= 1 {
                        t.set(None);
                        HIT.with(|h| h.set(true));
                        std::panic::panic_any(Died);
                    }
                    t.set(Some((target, n - 1)));
                }
            }
        });
    }

    /// Runs `f`, "killing" it (a panic) at the `nth` pass of point `name`.
    /// Returns whether it died there.
    pub fn die_at(name: &'static str, nth: u32, f: impl FnOnce()) -> bool {
        assert!(super::POINTS.contains(&name), "unknown crash point {name}");
        TEST_HOOK.with(|h| h.set(Some(panic_at_target)));
        TARGET.with(|t| t.set(Some((name, nth))));
        HIT.with(|h| h.set(false));
        // The default panic hook prints a line per "death": harmless.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        TEST_HOOK.with(|h| h.set(None));
        TARGET.with(|t| t.set(None));
        match r {
            Ok(()) => false,
            Err(e) if e.is::<Died>() => HIT.with(|h| h.get()),
            Err(e) => std::panic::resume_unwind(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::die_at;
    use super::*;
    use std::collections::BTreeSet;

    /// Every `point("…")` call in the source, by name.
    fn points_in_source() -> BTreeSet<String> {
        fn walk(dir: &std::path::Path, out: &mut BTreeSet<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    let mut at = 0;
                    while let Some(i) = text[at..].find("crash::point(\"") {
                        let start = at + i + "crash::point(\"".len();
                        let end = start + text[start..].find('"').unwrap();
                        out.insert(text[start..end].to_owned());
                        at = end;
                    }
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut out,
        );
        out
    }

    #[test]
    fn the_list_names_exactly_the_points_in_the_code() {
        let listed: BTreeSet<String> = POINTS.iter().map(|p| p.to_string()).collect();
        assert_eq!(listed.len(), POINTS.len(), "a point is listed twice");
        assert_eq!(points_in_source(), listed);
    }

    #[test]
    fn die_at_stops_at_the_nth_pass_only() {
        let mut passes = 0;
        let died = die_at("insert.claimed", 2, || {
            for _ in 0..3 {
                point("insert.claimed");
                passes += 1;
            }
        });
        assert!(died);
        assert_eq!(passes, 1);
        assert!(!die_at("insert.claimed", 5, || point("insert.claimed")));
    }
}
