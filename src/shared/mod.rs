//! State shared by all workers and kept across reloads: the zone with its
//! counter table (`zone`), and the registry of the upstreams and keys each
//! configuration load declares (`registry`). The http front-end feeds the
//! registry today; stream upstreams and the Lua C ABI will feed it the same
//! way, and the per-worker record for crash recovery will live in the zone.

pub mod balance;
pub mod checks;
pub mod front_end;
pub mod module_conf;
pub mod rebalance;
pub mod registry;
pub mod workers;
pub mod zone;
