//! `least_conn_persistent_status;`: serves the status page.

use nginx_sys::{ngx_chain_t, ngx_http_arg, ngx_http_request_t, ngx_int_t, ngx_str_t};
use ngx::core::{Buffer, Status};
use ngx::http::{HTTPStatus, HttpModule, HttpModuleMainConf, Method, Request};

use crate::core::ramp;
use crate::core::status::{parse_format, render, render_subsystem, Entry, Format, State, ZoneInfo};
use crate::core::status_html::parse_refresh;
use crate::core::status_model::{Checked, Rebalance};
use crate::core::table::{FLAG_LUA, FLAG_REBALANCE};
use crate::ngx::peers::now_ms;
use crate::shared::registry::Registry;
use crate::shared::zone::{tables_of_other_modules, ZoneLink};

use super::Module;

pub extern "C" fn handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx passes the request this location is handling.
    let r = unsafe { Request::from_ngx_http_request(r) };
    respond(r).into()
}

fn respond(r: &mut Request) -> Status {
    if r.method() != Method::GET && r.method() != Method::HEAD {
        return HTTPStatus::NOT_ALLOWED.into();
    }
    let rc = r.discard_request_body();
    if !rc.is_ok() {
        return rc;
    }
    let Ok(mut format) = parse_format(query_arg(r, b"format").as_ref().map(ngx_str_t::as_bytes))
    else {
        return HTTPStatus::BAD_REQUEST.into();
    };
    if let Format::Html { refresh } = &mut format {
        let Some(seconds) =
            parse_refresh(query_arg(r, b"refresh").as_ref().map(ngx_str_t::as_bytes))
        else {
            return HTTPStatus::BAD_REQUEST.into();
        };
        *refresh = seconds;
    }
    let body = match query_arg(r, b"subsystem").as_ref().map(ngx_str_t::as_bytes) {
        None | Some(b"http") => {
            let Some(mcf) = Module::main_conf(r.as_ref()) else {
                return HTTPStatus::INTERNAL_SERVER_ERROR.into();
            };
            let (zone, mut entries) = collect(&mcf.registry);
            render(format, zone.as_ref(), &mut entries)
        }
        Some(b"stream") => {
            // The stream module's zone, found among this cycle's zones.
            let tag = core::ptr::from_ref(Module::module()).cast();
            let Some(zone) = tables_of_other_modules(tag).into_iter().next() else {
                return HTTPStatus::NOT_FOUND.into();
            };
            let (info, mut entries) = zone_entries(&zone);
            render_subsystem(format, Some("stream"), Some(&info), &mut entries)
        }
        Some(_) => return HTTPStatus::BAD_REQUEST.into(),
    };
    send(r, format.content_type(), &body)
}

/// An argument of the query string, if given.
fn query_arg(r: &mut Request, name: &[u8]) -> Option<ngx_str_t> {
    let mut value = ngx_str_t::empty();
    // SAFETY: a live request; nginx only reads the name and points `value`
    // into the request's arguments.
    let rc = unsafe { ngx_http_arg(r.as_mut(), name.as_ptr().cast_mut(), name.len(), &mut value) };
    (rc == Status::NGX_OK.0).then_some(value)
}

/// Every key in a zone, and the zone's figures, from one short hold of its
/// lock (`ZoneLink::snapshot`).
fn zone_entries(z: &ZoneLink) -> (ZoneInfo, Vec<Entry>) {
    let snap = z.snapshot();
    let now = ramp::now_ds(now_ms());
    let entries = snap
        .entries
        .iter()
        .map(|e| Entry {
            key: String::from_utf8_lossy(snap.key(e)).into_owned(),
            count: u64::from(e.count),
            weight: e.meta.weight,
            max_conns: e.meta.max_conns,
            state: State::from_flags(e.meta.flags),
            lua: e.meta.flags & FLAG_LUA != 0,
            ramping: ramp::elapsed(now, e.ramp_since, e.meta.slow_start)
                .map(|elapsed| ramp::percent(elapsed, e.meta.slow_start)),
            rebalance: (e.meta.flags & FLAG_REBALANCE != 0).then_some(Rebalance {
                shed: e.shed,
                shedding: e.shedding,
            }),
            health: e.health.map(|view| Checked {
                view,
                last_ms_ago: (view.last_ms != 0).then(|| now_ms().saturating_sub(view.last_ms)),
            }),
        })
        .collect();
    (snap.info, entries)
}

/// Every key in the zone, then the servers this configuration counts per
/// worker (no zone, or it was full).
fn collect(registry: &Registry) -> (Option<ZoneInfo>, Vec<Entry>) {
    let (info, mut entries) = match registry.zone().map(zone_entries) {
        Some((info, entries)) => (Some(info), entries),
        None => (None, Vec::new()),
    };
    for up in registry.upstreams() {
        up.for_each_peer(|pc| {
            if !pc.in_zone() {
                entries.push(Entry {
                    key: String::from_utf8_lossy(&pc.key).into_owned(),
                    count: u64::from(pc.local_count()),
                    weight: pc.meta.weight,
                    max_conns: pc.meta.max_conns,
                    state: State::Fallback,
                    lua: false,
                    ramping: None,
                    rebalance: None,
                    health: None,
                });
            }
        });
    }
    (info, entries)
}

fn send(r: &mut Request, content_type: &'static str, body: &str) -> Status {
    r.set_status(HTTPStatus::OK);
    r.set_content_length_n(body.len());
    let headers = &mut r.as_mut().headers_out;
    headers.content_type = ngx_str_t {
        len: content_type.len(),
        data: content_type.as_ptr().cast_mut(),
    };
    headers.content_type_len = content_type.len();
    headers.content_type_lowcase = core::ptr::null_mut();

    let rc = r.send_header();
    if rc == Status::NGX_ERROR || rc.0 > Status::NGX_OK.0 || headers_only(r) {
        return rc;
    }
    let Some(mut buf) = r.pool().create_buffer_from_str(body) else {
        return Status::NGX_ERROR;
    };
    buf.set_last_buf(true);
    buf.set_last_in_chain(true);
    let mut out = ngx_chain_t {
        buf: buf.as_ngx_buf_mut(),
        next: core::ptr::null_mut(),
    };
    r.output_filter(&mut out)
}

/// Whether the response ends with its headers: a HEAD request (for the 200
/// this page sends, the one case where nginx's header filter sets
/// `r->header_only`; a subrequest is a GET).
///
/// Read from the method rather than `r->header_only`: from nginx 1.29.3 (an
/// `in_port_t port` before them) bindgen misplaces the request's bit-fields
/// by 2 bits (it misses that gcc moves `uri_changes` to the next 32-bit
/// word): its accessor reads `pipeline` instead, which sent a body to HEAD
/// and none to a pipelined GET.
fn headers_only(r: &Request) -> bool {
    r.method() == Method::HEAD
}
