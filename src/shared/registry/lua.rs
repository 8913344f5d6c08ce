//! Lua's declarations: an upstream declared through the C ABI
//! (`include/least_conn_persistent.h`) by one worker, its keys stored in the
//! zone as Lua keys, which other workers and later declarations find.

use crate::core::key::{self, Occurrence};
use crate::core::table::{Meta, RecordRef, SlotRef, FLAG_LUA};
use crate::shared::zone::ZoneLink;

use super::upstream::{List, UpstreamCounters};

/// Why a Lua declaration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeclareError {
    NoZone,
    Full,
    /// A key of the declaration belongs to an nginx `upstream {}` block.
    Conflict,
}

/// Stores Lua upstream `id` with `servers` (address and metadata) in the
/// zone `link`, counts attributed to `record` (this worker's): its keys are
/// stored (or found) as Lua keys stamped with `now` (the current second),
/// ramping over `slow_start` (deciseconds), and the servers of `previous`
/// (its earlier declaration by this worker) that are gone drain. Keys this call
/// added are given up again if the declaration is refused (zone full, or
/// a key of an nginx upstream). Linear in the servers;
/// everything is allocated before the zone is locked, and nothing is logged
/// under it.
pub fn declare(
    link: ZoneLink,
    record: Option<RecordRef>,
    id: &[u8],
    servers: &[(&[u8], Meta)],
    previous: Option<&UpstreamCounters>,
    now: u32,
    slow_start: u32,
) -> Result<UpstreamCounters, DeclareError> {
    let mut up = counters(id, servers, slow_start);
    let gone = previous.map_or_else(Vec::new, |previous| undeclared(&up, previous));
    let mut added = Vec::with_capacity(servers.len());
    let locked = link.lock();
    // Keys it adds ramp up (slow start) if the id was declared before, by
    // this worker or another: not on its first declaration.
    let declared_before = previous.is_some()
        || up
            .list(List::Primary)
            .iter()
            .any(|pc| link.table.find(&locked, &pc.key).is_some());
    let ramp = up.ramp_start(declared_before);
    let mut refused = None;
    for (i, pc) in up.list(List::Primary).iter().enumerate() {
        let existing = link.table.find(&locked, &pc.key);
        if existing.is_some_and(|s| s.flags() & FLAG_LUA == 0) {
            refused = Some(DeclareError::Conflict);
            break;
        }
        match link
            .table
            .upsert_at(&locked, &pc.key, pc.upstream_len, pc.meta, now, ramp)
        {
            Ok(slot) => {
                if existing.is_none() {
                    added.push(slot);
                }
                pc.set_stored(Some(slot));
            }
            Err(_) => {
                refused = Some(DeclareError::Full);
                break;
            }
        }
        if i == 0 {
            crate::core::crash::point("lua.declared");
        }
    }
    if let Some(e) = refused {
        for &slot in &added {
            link.table.remove_idle(&locked, slot);
        }
        drop(locked);
        return Err(e);
    }
    for &slot in &gone {
        link.table.drain(&locked, slot, link.epoch);
    }
    up.set_zone(link, record);
    for pc in up.list(List::Primary).iter() {
        let slot = pc.slot().expect("stored above");
        pc.set_counting(Some(up.counted(&link, &locked, slot)));
    }
    drop(locked);
    Ok(up)
}

/// The declaration's counters, not stored yet: one per server, on the
/// primary list, flagged as Lua keys.
fn counters(id: &[u8], servers: &[(&[u8], Meta)], slow_start: u32) -> UpstreamCounters {
    let mut up = UpstreamCounters::new(id);
    up.slow_start = slow_start;
    up.set_list(
        List::Primary,
        servers.iter().map(|&(address, meta)| {
            let flags = meta.flags | FLAG_LUA;
            let occurrence = Occurrence {
                address,
                line: address,
            };
            (occurrence, Meta { flags, ..meta })
        }),
    );
    up
}

/// The counters of `previous` (the earlier declaration of Lua upstream
/// `up`) whose keys `up` no longer lists: what declaring it again drains.
/// Linear (`key::undeclared`), done before the zone is locked.
fn undeclared(up: &UpstreamCounters, previous: &UpstreamCounters) -> Vec<SlotRef> {
    let declared = up.list(List::Primary);
    let (primary, backup) = (previous.list(List::Primary), previous.list(List::Backup));
    let counted = primary
        .iter()
        .chain(backup.iter())
        .filter_map(|old| Some((&*old.key, old.slot()?)));
    key::undeclared(declared.iter().map(|pc| &*pc.key), counted)
}
