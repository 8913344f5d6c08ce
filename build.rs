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
    if cfg!(target_os = "macos") {
        println!("cargo::rustc-link-arg=-undefined");
        println!("cargo::rustc-link-arg=dynamic_lookup");
    }
}
