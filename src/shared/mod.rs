//! What the front-ends (http, stream, Lua) share: the zone with its counter
//! table, kept across reloads, and its directive (`zone`); the registry of
//! the upstreams and keys each configuration load declares (`registry`);
//! the balancer (`balance`), rebalancing (`rebalance`) and health checks
//! (`checks`); each worker's record in the zone (`workers`); and, for the
//! http and stream modules, their directives (`directives`), configuration
//! (`module_conf`) and hooks (`front_end`).

pub mod balance;
pub mod checks;
pub mod directives;
pub mod front_end;
pub mod module_conf;
pub mod rebalance;
pub mod registry;
pub mod workers;
pub mod zone;
