//! The thin unsafe edge between nginx and the rest of the module: every raw
//! pointer nginx hands us outside an `extern "C"` entry point is turned into
//! a reference here, once, with the reason it is valid.
//!
//! - `crash`: the crash points' hook (feature `crash-points`, tests only);
//! - `conf`: directive arguments, typed configuration errors, one `[emerg]` exit;
//! - `log`: log lines that carry the module's or the zone's name;
//! - `shm`: shared memory zones (declare, find, lock);
//! - `timer`: a worker's periodic timers (housekeeping, rebalancing, health
//!   checks);
//! - `live`: a worker's live connections per upstream (rebalancing);
//! - `lock_stats`: hold times of the zone mutex (feature `lock-stats`, for
//!   the benchmark only);
//! - `process`: whether this process is a worker (not a cache helper);
//! - `subsystem`: the names of the subsystem this build balances (http, or
//!   stream with the `stream` feature);
//! - `probe`: a health check's connection, on nginx's event loop;
//! - `peers`: round-robin's peer lists as `core::select` sees them, and the
//!   per-request `tried` bitmap.

pub mod conf;
#[cfg(feature = "crash-points")]
pub mod crash;
pub mod live;
#[cfg(feature = "lock-stats")]
pub mod lock_stats;
pub mod log;
pub mod peers;
pub mod probe;
pub mod process;
pub mod shm;
#[cfg(feature = "stream")]
pub mod stream;
pub mod subsystem;
pub mod timer;
