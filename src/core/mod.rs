//! Pure logic, with no nginx types: everything here runs under `cargo test`.
//!
//! - `address`: the server addresses a Lua balancer may declare;
//! - `key`: the text of a counter's key and its hash;
//! - `select`: the least-connections choice over any peer list;
//! - `least_index`: servers indexed by connections per weight, for a pick
//!   in O(log n) over large upstreams;
//! - `eligible`: whether a peer can take a connection, and its load;
//! - `ramp`: slow start, how a server that just joined is compared while it
//!   ramps up;
//! - `rebalance`: which servers shed long-lived connections, and how fast;
//! - `table`: the counter table that lives in the shared zone, with its
//!   flags, health records, per-worker records and crash repair;
//! - `liveness`: whether a worker recorded in the zone still runs;
//! - `sweep`: what a configuration load does with each key already stored;
//! - `health`: active health checks, rise and fall;
//! - `check_conf`, `check_answer`: a check's parameters, and what an http
//!   check's answer says (status, capacity, load); `check_judge`: what
//!   one check found (the records in the zone are `table`'s);
//! - `follow`: keys a worker stores at run time (DNS, stale handles), and
//!   the copy of a peer list that following DNS works from;
//! - `status`, `status_html`, `status_model`: the status page (what it
//!   shows, rendered as JSON and Prometheus text, or as HTML);
//! - `array_list`: a peer list in arrays, for front-ends without nginx's
//!   (Lua balancers);
//! - `tokens`: what a Lua pick took, redeemable once;
//! - `crash`: named points where tests make the process die;
//! - `histogram`: durations per bucket (feature `lock-stats`, for the
//!   benchmark only).

pub mod address;
pub mod array_list;
pub mod check_answer;
pub mod check_conf;
pub mod check_judge;
pub mod crash;
pub mod eligible;
pub mod follow;
pub mod health;
#[cfg(any(test, feature = "lock-stats"))]
pub mod histogram;
pub mod key;
pub mod least_index;
pub mod liveness;
pub mod ramp;
pub mod rebalance;
pub mod select;
pub mod status;
pub mod status_html;
pub mod status_model;
pub mod sweep;
pub mod table;
pub mod tokens;
