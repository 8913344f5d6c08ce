//! Passes what nginx-sys learned about the nginx tree to the compiler.
//!
//! Cargo gives `DEP_NGINX_*` only to crates that depend on nginx-sys directly,
//! which is why Cargo.toml lists it next to `ngx`.
use std::env;

fn main() {
    // nginx-sys reports the configured features (http_ssl, ...) as
    // `ngx_feature` values, so code can follow the nginx it is built against.
    println!("cargo::rerun-if-env-changed=DEP_NGINX_FEATURES_CHECK");
    println!(
        "cargo::rustc-check-cfg=cfg(ngx_feature, values({}))",
        env::var("DEP_NGINX_FEATURES_CHECK").unwrap_or("any()".to_string())
    );
    println!("cargo::rerun-if-env-changed=DEP_NGINX_FEATURES");
    for feature in env::var("DEP_NGINX_FEATURES")
        .unwrap_or_default()
        .split(',')
    {
        let feature = feature.trim();
        if !feature.is_empty() {
            println!("cargo::rustc-cfg=ngx_feature=\"{feature}\"");
        }
    }
    // nginx 1.27.3 added reference counts to round-robin peers (for peers
    // that `resolve` can free): a get must take the reference that
    // round-robin's free gives back.
    println!("cargo::rerun-if-env-changed=DEP_NGINX_VERSION_NUMBER");
    println!("cargo::rustc-check-cfg=cfg(ngx_peer_refs)");
    println!("cargo::rustc-check-cfg=cfg(ngx_resolve)");
    let version: u64 = env::var("DEP_NGINX_VERSION_NUMBER")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    if version >= 1_027_003 {
        println!("cargo::rustc-cfg=ngx_peer_refs");
        // The same release lets `server ... resolve` change the peers of an
        // upstream in a `zone` at run time, bumping the lists' `config`.
        let features = env::var("DEP_NGINX_FEATURES").unwrap_or_default();
        if features
            .split(',')
            .any(|f| f.trim() == "http_upstream_zone")
        {
            println!("cargo::rustc-cfg=ngx_resolve");
        }
    }
    // nginx 1.29.6 added session affinity (`sticky`, http only): it sets a
    // hint (`pc->hint`, a server's route) for the balancer's get, expects the
    // chosen peer's route back in `pc->sid`, and a `server ... drain` peer
    // (`down` = NGX_HTTP_UPSTREAM_DRAINING) still takes the sessions that
    // stick to it. `sticky` wraps the method declared before it.
    // Built `--without-http_upstream_sticky_module`, nginx has neither
    // sticky's fields nor NGX_HTTP_UPSTREAM_DRAINING: configure's header says.
    println!("cargo::rustc-check-cfg=cfg(ngx_sticky)");
    if version >= 1_029_006 && configured("NGX_HTTP_UPSTREAM_STICKY") {
        println!("cargo::rustc-cfg=ngx_sticky");
    }
    // nginx 1.29.7 made upstream keepalive the default and hooks it in after
    // every upstream's method is set up (init_main_conf), wherever
    // `keepalive` stands in the block: it no longer takes the method's place.
    println!("cargo::rustc-check-cfg=cfg(ngx_keepalive_any_order)");
    if version >= 1_029_007 {
        println!("cargo::rustc-cfg=ngx_keepalive_any_order");
    }
    if cfg!(target_os = "macos") {
        println!("cargo::rustc-link-arg=-undefined");
        println!("cargo::rustc-link-arg=dynamic_lookup");
    }
}

/// Whether the nginx tree's configure defined `name` (objs/ngx_auto_config.h
/// in NGINX_BUILD_DIR); true when that header cannot be read, as nginx's
/// defaults have it.
fn configured(name: &str) -> bool {
    println!("cargo::rerun-if-env-changed=NGINX_BUILD_DIR");
    let Ok(dir) = env::var("NGINX_BUILD_DIR") else {
        return true;
    };
    let header = std::path::Path::new(&dir).join("ngx_auto_config.h");
    println!("cargo::rerun-if-changed={}", header.display());
    match std::fs::read_to_string(&header) {
        Ok(text) => text
            .lines()
            .any(|l| l.split_whitespace().eq(["#define", name, "1"])),
        Err(_) => true,
    }
}
