//! `least_conn_persistent_status;`: serves the status page.

use nginx_sys::{
    ngx_chain_t, ngx_create_temp_buf, ngx_http_arg, ngx_http_discard_request_body,
    ngx_http_output_filter, ngx_http_request_t, ngx_http_send_header, ngx_int_t, ngx_str_t,
    NGX_ERROR, NGX_HTTP_BAD_REQUEST, NGX_HTTP_GET, NGX_HTTP_HEAD, NGX_HTTP_INTERNAL_SERVER_ERROR,
    NGX_HTTP_NOT_ALLOWED, NGX_HTTP_OK, NGX_OK,
};
use ngx::http::HttpModuleMainConf;

use crate::config::MainConf;
use crate::status::{parse_format, render, Entry, State, ZoneInfo};
use crate::Module;

pub extern "C" fn handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx passes the request this location is handling.
    let r = unsafe { &mut *r };
    respond(r)
}

fn respond(r: &mut ngx_http_request_t) -> ngx_int_t {
    if r.method & (NGX_HTTP_GET | NGX_HTTP_HEAD) as usize == 0 {
        return NGX_HTTP_NOT_ALLOWED as ngx_int_t;
    }
    // SAFETY: a live request.
    let rc = unsafe { ngx_http_discard_request_body(r) };
    if rc != NGX_OK as ngx_int_t {
        return rc;
    }
    let mut arg = ngx_str_t::empty();
    // SAFETY: a live request; `arg` receives a slice of its args.
    let given = unsafe { ngx_http_arg(r, c"format".as_ptr().cast_mut().cast(), 6, &mut arg) }
        == NGX_OK as ngx_int_t;
    let arg = given.then(|| unsafe { crate::zone::str_bytes(&arg) });
    let Ok(format) = parse_format(arg) else {
        return NGX_HTTP_BAD_REQUEST as ngx_int_t;
    };
    let Some(mcf) = Module::main_conf(&*r) else {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    };
    let (zone, mut entries) = collect(mcf);
    let body = render(format, zone.as_ref(), &mut entries);
    send(r, format.content_type(), body.as_bytes())
}

/// Every key in the zone, then the servers this configuration counts per
/// worker (no zone, or it was full).
fn collect(mcf: &MainConf) -> (Option<ZoneInfo>, Vec<Entry>) {
    let mut entries = Vec::new();
    let zone = mcf.zone();
    if let Some(z) = zone {
        if let Some(table) = z.table() {
            table.for_each(&z.lock(), |e| {
                entries.push(Entry {
                    key: String::from_utf8_lossy(e.key).into_owned(),
                    count: u64::from(e.count),
                    weight: e.meta.weight,
                    max_conns: e.meta.max_conns,
                    state: State::from_flags(e.meta.flags),
                })
            });
        }
    }
    for up in mcf.upstreams() {
        for pc in up.peers().filter(|pc| pc.handle.is_none()) {
            entries.push(Entry {
                key: String::from_utf8_lossy(&pc.key).into_owned(),
                count: u64::from(pc.local),
                weight: pc.meta.weight,
                max_conns: pc.meta.max_conns,
                state: State::Fallback,
            });
        }
    }
    (zone.map(|z| z.info()), entries)
}

fn send(r: &mut ngx_http_request_t, content_type: &'static str, body: &[u8]) -> ngx_int_t {
    r.headers_out.status = NGX_HTTP_OK as usize;
    r.headers_out.content_length_n = body.len() as i64;
    r.headers_out.content_type = ngx_str_t {
        len: content_type.len(),
        data: content_type.as_ptr().cast_mut(),
    };
    r.headers_out.content_type_len = content_type.len();
    r.headers_out.content_type_lowcase = core::ptr::null_mut();

    // SAFETY: a live request; the buffer is fresh pool memory of body.len().
    unsafe {
        let rc = ngx_http_send_header(r);
        if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || r.header_only() != 0 {
            return rc;
        }
        let b = ngx_create_temp_buf(r.pool, body.len().max(1));
        if b.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        core::ptr::copy_nonoverlapping(body.as_ptr(), (*b).pos, body.len());
        (*b).last = (*b).pos.add(body.len());
        (*b).set_last_buf(1);
        (*b).set_last_in_chain(1);
        let mut out = ngx_chain_t {
            buf: b,
            next: core::ptr::null_mut(),
        };
        ngx_http_output_filter(r, &mut out)
    }
}
