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
    if cfg!(target_os = "macos") {
        println!("cargo::rustc-link-arg=-undefined");
        println!("cargo::rustc-link-arg=dynamic_lookup");
    }
}
