//! ngx_http_least_conn_persistent_module: least_conn over connection counts
//! kept in a shared zone that outlives reloads.
#![allow(dead_code)]

pub mod cleanup;
pub mod key;
pub mod select;
pub mod table;
