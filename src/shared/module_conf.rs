//! The configuration every front-end module keeps (http's and stream's):
//! the registry of a load in the main context, and per upstream whether it
//! asked for the method, where its counters are, and what rebalancing keeps
//! for it in each worker.

use nginx_sys::ngx_uint_t;

use crate::ngx::conf::{text, ConfWarning};
use crate::ngx::subsystem::{
    InitUpstream, UpstreamSrvConf, UPSTREAM_BACKUP, UPSTREAM_CREATE, UPSTREAM_DOWN,
    UPSTREAM_FAIL_TIMEOUT, UPSTREAM_MAX_CONNS, UPSTREAM_MAX_FAILS, UPSTREAM_WEIGHT,
};

use super::rebalance::Rebalancer;
use super::registry::Registry;

#[derive(Debug, Default)]
pub struct MainConf {
    pub registry: Registry,
}

/// `least_conn_persistent`'s parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodParams {
    /// `slow_start=`: the window in deciseconds (0: none).
    pub slow_start: u32,
    /// `index=`: lists of at least this many servers get a pick index
    /// (`usize::MAX`: `index=off`).
    pub index_from: usize,
}

impl MethodParams {
    /// Below this many servers a scan costs about what the index does.
    pub const DEFAULT_INDEX_FROM: usize = 16;
}

impl Default for MethodParams {
    fn default() -> Self {
        MethodParams {
            slow_start: 0,
            index_from: Self::DEFAULT_INDEX_FROM,
        }
    }
}

#[derive(Debug, Default)]
pub struct SrvConf {
    /// `least_conn_persistent;` was given in this upstream.
    pub enabled: bool,
    /// The upstream's place in the registry, set by our `init_upstream`;
    /// still `None` after configuration means a later method replaced ours.
    pub registered: Option<usize>,
    /// `slow_start=`: the window in deciseconds (0: none).
    pub slow_start: u32,
    /// `index=` (`MethodParams::index_from`).
    pub index_from: usize,
    /// `least_conn_persistent_rebalance`, when given.
    pub rebalance: Option<crate::core::rebalance::Params>,
    /// What this worker's rebalancing keeps between its ticks (each worker
    /// has its own copy of the configuration).
    pub rebalancer: Rebalancer,
    /// `least_conn_persistent_check`, when given.
    pub check: Option<crate::core::check_conf::CheckParams>,
}

impl SrvConf {
    /// `least_conn_persistent;` in `uscf`, the upstream block being parsed:
    /// takes over its balancer (`init`: the front-end's `init_upstream`)
    /// and accepts the server parameters stock least_conn accepts. Like a
    /// stock method, it replaces one declared before it (or itself, given
    /// twice), with a warning.
    pub fn claim(
        &mut self,
        uscf: &mut UpstreamSrvConf,
        init: InitUpstream,
        params: MethodParams,
    ) -> Option<ConfWarning> {
        let redefined = if self.enabled {
            Some(ConfWarning::Repeated(text(&uscf.host)))
        } else {
            uscf.peer
                .init_upstream
                .is_some()
                .then(|| ConfWarning::MethodRedefined(text(&uscf.host)))
        };
        self.enabled = true;
        self.slow_start = params.slow_start;
        self.index_from = params.index_from;
        uscf.peer.init_upstream = init;
        uscf.flags = (UPSTREAM_CREATE
            | UPSTREAM_WEIGHT
            | UPSTREAM_MAX_CONNS
            | UPSTREAM_MAX_FAILS
            | UPSTREAM_FAIL_TIMEOUT
            | UPSTREAM_DOWN
            | UPSTREAM_BACKUP) as ngx_uint_t;
        // nginx 1.27.3+: `server ... resolve` (keys follow the addresses DNS
        // gives at run time; see `balance::follow_resolved_peers`).
        #[cfg(ngx_resolve)]
        {
            uscf.flags |= crate::ngx::subsystem::UPSTREAM_MODIFY as ngx_uint_t;
        }
        redefined
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nginx_sys::{ngx_conf_t, ngx_int_t, ngx_str_t};

    extern "C" fn ours(_: *mut ngx_conf_t, _: *mut UpstreamSrvConf) -> ngx_int_t {
        0
    }

    extern "C" fn stock(_: *mut ngx_conf_t, _: *mut UpstreamSrvConf) -> ngx_int_t {
        0
    }

    fn upstream() -> UpstreamSrvConf {
        // SAFETY: nginx's upstream configuration is plain data: zeroes are
        // an upstream with no name, flags or method.
        let mut uscf: UpstreamSrvConf = unsafe { core::mem::zeroed() };
        uscf.host = ngx_str_t {
            len: 1,
            data: b"u".as_ptr().cast_mut(),
        };
        uscf
    }

    fn method(uscf: &UpstreamSrvConf) -> Option<usize> {
        uscf.peer.init_upstream.map(|f| f as usize)
    }

    #[test]
    fn the_method_takes_the_upstream_over_with_least_conns_server_parameters() {
        let (mut uscf, mut scf) = (upstream(), SrvConf::default());
        assert_eq!(
            scf.claim(
                &mut uscf,
                Some(ours),
                MethodParams {
                    slow_start: 300,
                    index_from: 5
                }
            ),
            None
        );
        assert!(scf.enabled && scf.registered.is_none());
        assert_eq!((scf.slow_start, scf.index_from), (300, 5));
        assert_eq!(method(&uscf), Some(ours as *const () as usize));
        let parameters = UPSTREAM_CREATE
            | UPSTREAM_WEIGHT
            | UPSTREAM_MAX_CONNS
            | UPSTREAM_MAX_FAILS
            | UPSTREAM_FAIL_TIMEOUT
            | UPSTREAM_DOWN
            | UPSTREAM_BACKUP;
        assert_eq!(
            uscf.flags & parameters as ngx_uint_t,
            parameters as ngx_uint_t
        );
    }

    #[test]
    fn the_method_replaces_the_one_before_it_and_says_so() {
        let (mut uscf, mut scf) = (upstream(), SrvConf::default());
        uscf.peer.init_upstream = Some(stock);
        let warning = scf.claim(&mut uscf, Some(ours), MethodParams::default());
        assert_eq!(warning, Some(ConfWarning::MethodRedefined("u".into())));
        assert_eq!(method(&uscf), Some(ours as *const () as usize));
        let again = scf.claim(&mut uscf, Some(ours), MethodParams::default());
        assert_eq!(again, Some(ConfWarning::Repeated("u".into())));
    }
}
