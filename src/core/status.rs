//! The status page: every counter, as JSON, in Prometheus' text format, or
//! as an HTML page (`status_html.rs`).
//!
//! Rendering is kept apart from the request handler so that the exact output
//! is tested without nginx.

use std::fmt::Write;

pub use super::status_model::{Entry, State, ZoneInfo};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Prometheus,
    /// Refreshing itself every `refresh` seconds (0: never).
    Html {
        refresh: u32,
    },
}

/// `?format=` was given a value we do not serve.
#[derive(Debug, PartialEq, Eq)]
pub struct UnknownFormat;

pub fn parse_format(arg: Option<&[u8]>) -> Result<Format, UnknownFormat> {
    match arg {
        None | Some(b"json") => Ok(Format::Json),
        Some(b"prometheus") => Ok(Format::Prometheus),
        Some(b"html") => Ok(Format::Html {
            refresh: super::status_html::DEFAULT_REFRESH,
        }),
        Some(_) => Err(UnknownFormat),
    }
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Prometheus => "text/plain; version=0.0.4",
            Format::Html { .. } => "text/html; charset=utf-8",
        }
    }
}

pub fn render(format: Format, zone: Option<&ZoneInfo>, entries: &mut [Entry]) -> String {
    render_subsystem(format, None, zone, entries)
}

/// As `render`, for another subsystem's zone (`"stream"`): JSON then names
/// it in a `subsystem` field, and every Prometheus series has a
/// `subsystem` label, so that both pages can be scraped together.
pub fn render_subsystem(
    format: Format,
    subsystem: Option<&str>,
    zone: Option<&ZoneInfo>,
    entries: &mut [Entry],
) -> String {
    entries.sort_by(|a, b| {
        a.key
            .cmp(&b.key)
            .then(a.state.as_str().cmp(b.state.as_str()))
    });
    match format {
        Format::Json => render_json(subsystem, zone, entries),
        Format::Prometheus => render_prometheus(subsystem, zone, entries),
        Format::Html { refresh } => {
            super::status_html::render_html(subsystem, zone, entries, refresh)
        }
    }
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn render_json(subsystem: Option<&str>, zone: Option<&ZoneInfo>, entries: &[Entry]) -> String {
    let mut out = String::with_capacity(128 + entries.len() * 160);
    out.push('{');
    if let Some(s) = subsystem {
        out.push_str("\"subsystem\":");
        json_str(&mut out, s);
        out.push(',');
    }
    out.push_str("\"zone\":");
    match zone {
        None => out.push_str("null"),
        Some(z) => {
            out.push_str("{\"name\":");
            json_str(&mut out, &z.name);
            let _ = write!(
                out,
                ",\"size\":{},\"used\":{},\"keys\":{},\"reclaimed\":{},\"workers\":[",
                z.size, z.used, z.keys, z.reclaimed
            );
            for (i, (pid, conns)) in z.workers.iter().enumerate() {
                let sep = if i == 0 { "" } else { "," };
                let _ = write!(out, "{sep}{{\"pid\":{pid},\"connections\":{conns}}}");
            }
            out.push_str("]}");
        }
    }
    out.push_str(",\"counters\":[");
    for (i, e) in entries.iter().enumerate() {
        let (upstream, server) = e.parts();
        out.push_str(if i == 0 { "\n{" } else { ",\n{" });
        out.push_str("\"upstream\":");
        json_str(&mut out, upstream);
        out.push_str(",\"server\":");
        json_str(&mut out, server);
        out.push_str(",\"key\":");
        json_str(&mut out, &e.key);
        let _ = write!(
            out,
            ",\"count\":{},\"weight\":{},\"max_conns\":{},\"state\":\"{}\",\"source\":\"{}\"",
            e.count,
            e.weight,
            e.max_conns,
            e.state.as_str(),
            if e.lua { "lua" } else { "config" }
        );
        if let Some(p) = e.ramping {
            let _ = write!(out, ",\"ramping\":{p}");
        }
        if let Some(r) = e.rebalance {
            let _ = write!(out, ",\"shed\":{},\"rebalancing\":{}", r.shed, r.shedding);
        }
        out.push('}');
    }
    out.push_str("\n]}\n");
    out
}

fn label(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The metric families, documented in README.md.
const SERVER_METRICS: [(&str, &str); 3] = [
    (
        "least_conn_persistent_connections",
        "Live connections to the server, counted across all workers and reloads \
         (state=\"fallback\": this worker's own count, not in the zone).",
    ),
    (
        "least_conn_persistent_weight",
        "Configured weight of the server.",
    ),
    (
        "least_conn_persistent_max_conns",
        "Configured max_conns of the server (0: unlimited).",
    ),
];

fn render_prometheus(
    subsystem: Option<&str>,
    zone: Option<&ZoneInfo>,
    entries: &[Entry],
) -> String {
    let mut out = String::with_capacity(512 + entries.len() * 400);
    // The labels every series starts with.
    let mut first = String::new();
    if let Some(s) = subsystem {
        first.push_str("subsystem=\"");
        label(&mut first, s);
        first.push_str("\",");
    }
    if let Some(z) = zone {
        for (name, kind, help, value) in [
            (
                "least_conn_persistent_zone_size_bytes",
                "gauge",
                "Size of the shared zone.",
                z.size as u64,
            ),
            (
                "least_conn_persistent_zone_used_bytes",
                "gauge",
                "Bytes of the zone in use.",
                z.used as u64,
            ),
            (
                "least_conn_persistent_zone_keys",
                "gauge",
                "Counters stored in the zone.",
                u64::from(z.keys),
            ),
            (
                "least_conn_persistent_zone_reclaimed_connections_total",
                "counter",
                "Connections given back on behalf of worker processes that died holding them.",
                z.reclaimed,
            ),
            (
                "least_conn_persistent_zone_workers",
                "gauge",
                "Worker processes recorded in the zone.",
                z.workers.len() as u64,
            ),
            (
                "least_conn_persistent_zone_workers_holding_connections",
                "gauge",
                "Recorded worker processes that hold at least one connection.",
                z.workers.iter().filter(|&&(_, conns)| conns > 0).count() as u64,
            ),
            (
                "least_conn_persistent_zone_worker_connections",
                "gauge",
                "Connections the recorded worker processes hold, summed.",
                z.workers.iter().map(|&(_, conns)| conns).sum(),
            ),
        ] {
            // No series per process: a `pid` label would start new series
            // at every reload (the JSON and HTML pages list the pids).
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            let _ = write!(out, "{name}{{{first}zone=\"");
            label(&mut out, &z.name);
            let _ = writeln!(out, "\"}} {value}");
        }
    }
    for (m, (name, help)) in SERVER_METRICS.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for e in entries {
            let (upstream, server) = e.parts();
            let value = [e.count, u64::from(e.weight), u64::from(e.max_conns)][m];
            let _ = write!(out, "{name}{{{first}upstream=\"");
            label(&mut out, upstream);
            out.push_str("\",server=\"");
            label(&mut out, server);
            let _ = writeln!(out, "\",state=\"{}\"}} {value}", e.state.as_str());
        }
    }
    ramp_series(&mut out, &first, entries);
    rebalance_series(&mut out, &first, entries);
    out
}

/// Rebalancing, for the upstreams that have it: each server's closes, and
/// each upstream's state (once, from its first server).
fn rebalance_series(out: &mut String, first: &str, entries: &[Entry]) {
    let shed = "least_conn_persistent_shed_total";
    let _ = writeln!(
        out,
        "# HELP {shed} Connections to a server that rebalancing closed.\n# TYPE {shed} counter"
    );
    for e in entries {
        let Some(r) = e.rebalance else {
            continue;
        };
        let (upstream, server) = e.parts();
        let _ = write!(out, "{shed}{{{first}upstream=\"");
        label(out, upstream);
        out.push_str("\",server=\"");
        label(out, server);
        let _ = writeln!(out, "\"}} {}", r.shed);
    }
    let on = "least_conn_persistent_rebalancing";
    let _ = writeln!(
        out,
        "# HELP {on} Whether rebalancing closes connections of the upstream now (1) or not (0).\n\
         # TYPE {on} gauge"
    );
    let mut upstreams: Vec<(&str, bool)> = Vec::new();
    for e in entries {
        let Some(r) = e.rebalance else {
            continue;
        };
        let (upstream, _) = e.parts();
        match upstreams.iter_mut().find(|(u, _)| *u == upstream) {
            Some((_, on)) => *on |= r.shedding,
            None => upstreams.push((upstream, r.shedding)),
        }
    }
    for (upstream, shedding) in upstreams {
        let _ = write!(out, "{on}{{{first}upstream=\"");
        label(out, upstream);
        let _ = writeln!(out, "\"}} {}", u8::from(shedding));
    }
}

/// Slow start: how far each ramping server is (no series for the others).
fn ramp_series(out: &mut String, first: &str, entries: &[Entry]) {
    let name = "least_conn_persistent_ramp_percent";
    let _ = writeln!(
        out,
        "# HELP {name} How far a server that joined or came back is in its slow start \
         (only while it ramps up).\n# TYPE {name} gauge"
    );
    for e in entries {
        let Some(p) = e.ramping else {
            continue;
        };
        let (upstream, server) = e.parts();
        let _ = write!(out, "{name}{{{first}upstream=\"");
        label(out, upstream);
        out.push_str("\",server=\"");
        label(out, server);
        let _ = writeln!(out, "\"}} {p}");
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::core::status_model::tests::entry;
    use crate::core::table::{FLAG_BACKUP, FLAG_DOWN, FLAG_DRAINING};

    #[test]
    fn another_subsystem_is_named_in_json_and_every_series() {
        let zone = ZoneInfo {
            name: "s".into(),
            size: 65536,
            used: 8192,
            keys: 1,
            reclaimed: 0,
            workers: vec![(7, 1)],
            checker: 0,
        };
        let mut e = vec![entry("conn_count:u:127.0.0.1:1", 1, State::Up)];
        let json = render_subsystem(Format::Json, Some("stream"), Some(&zone), &mut e);
        assert!(json.starts_with("{\"subsystem\":\"stream\",\"zone\":{\"name\":\"s\""));
        let text = render_subsystem(Format::Prometheus, Some("stream"), Some(&zone), &mut e);
        let series: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(series.len(), 7 + 3);
        assert!(series.iter().all(|l| l.contains("{subsystem=\"stream\",")));
        assert!(!render(Format::Prometheus, Some(&zone), &mut e).contains("subsystem"));
    }

    #[test]
    fn formats() {
        assert_eq!(parse_format(None), Ok(Format::Json));
        assert_eq!(parse_format(Some(b"json")), Ok(Format::Json));
        assert_eq!(parse_format(Some(b"prometheus")), Ok(Format::Prometheus));
        assert_eq!(parse_format(Some(b"html")), Ok(Format::Html { refresh: 5 }));
        assert_eq!(parse_format(Some(b"xml")), Err(UnknownFormat));
        assert_eq!(parse_format(Some(b"")), Err(UnknownFormat));
    }

    #[test]
    fn state_precedence() {
        assert_eq!(State::from_flags(0), State::Up);
        assert_eq!(State::from_flags(FLAG_BACKUP), State::Backup);
        assert_eq!(State::from_flags(FLAG_DOWN | FLAG_BACKUP), State::Down);
        assert_eq!(
            State::from_flags(FLAG_DRAINING | FLAG_DOWN),
            State::Draining
        );
    }

    #[test]
    fn json_lists_zone_and_sorted_counters() {
        let zone = ZoneInfo {
            name: "lcp".into(),
            size: 1 << 20,
            used: 12288,
            keys: 2,
            reclaimed: 7,
            workers: vec![(101, 3), (102, 0)],
            checker: 0,
        };
        let mut e = vec![
            entry("conn_count:b:[::1]:80", 0, State::Draining),
            entry("conn_count:a:127.0.0.1:8081", 3, State::Up),
        ];
        let out = render(Format::Json, Some(&zone), &mut e);
        assert_eq!(
            out,
            "{\"zone\":{\"name\":\"lcp\",\"size\":1048576,\"used\":12288,\"keys\":2,\"reclaimed\":7,\
             \"workers\":[{\"pid\":101,\"connections\":3},{\"pid\":102,\"connections\":0}]},\"counters\":[\n\
             {\"upstream\":\"a\",\"server\":\"127.0.0.1:8081\",\"key\":\"conn_count:a:127.0.0.1:8081\",\
             \"count\":3,\"weight\":2,\"max_conns\":0,\"state\":\"up\",\"source\":\"config\"},\n\
             {\"upstream\":\"b\",\"server\":\"[::1]:80\",\"key\":\"conn_count:b:[::1]:80\",\
             \"count\":0,\"weight\":2,\"max_conns\":0,\"state\":\"draining\",\"source\":\"config\"}\n]}\n"
        );
    }

    #[test]
    fn json_without_zone_and_with_odd_characters() {
        let mut e = vec![entry("conn_count:q\"\\:x\n", 1, State::Fallback)];
        let out = render(Format::Json, None, &mut e);
        assert!(out.starts_with("{\"zone\":null,"), "{out}");
        assert!(out.contains("\"upstream\":\"q\\\"\\\\\""), "{out}");
        assert!(out.contains("\"server\":\"x\\u000a\""), "{out}");
    }

    #[test]
    fn prometheus_text() {
        let zone = ZoneInfo {
            name: "lcp".into(),
            size: 65536,
            used: 8192,
            keys: 1,
            reclaimed: 4,
            workers: vec![(101, 3), (102, 0)],
            checker: 0,
        };
        let mut e = vec![entry("conn_count:a:127.0.0.1:8081", 3, State::Backup)];
        let out = render(Format::Prometheus, Some(&zone), &mut e);
        assert!(out.contains("# TYPE least_conn_persistent_connections gauge\n"));
        assert!(
            out.contains("(state=\"fallback\": this worker's own count, not in the zone)"),
            "the HELP text says what fallback series count"
        );
        assert!(out.contains(
            "least_conn_persistent_connections{upstream=\"a\",server=\"127.0.0.1:8081\",state=\"backup\"} 3\n"
        ));
        assert!(out.contains(
            "least_conn_persistent_weight{upstream=\"a\",server=\"127.0.0.1:8081\",state=\"backup\"} 2\n"
        ));
        assert!(out.contains("least_conn_persistent_zone_size_bytes{zone=\"lcp\"} 65536\n"));
        assert!(out.contains("least_conn_persistent_zone_keys{zone=\"lcp\"} 1\n"));
        assert!(out.contains(
            "# TYPE least_conn_persistent_zone_reclaimed_connections_total counter\n\
             least_conn_persistent_zone_reclaimed_connections_total{zone=\"lcp\"} 4\n"
        ));
        assert!(out.contains("least_conn_persistent_zone_workers{zone=\"lcp\"} 2\n"));
        assert!(out
            .contains("least_conn_persistent_zone_workers_holding_connections{zone=\"lcp\"} 1\n"));
        assert!(out.contains("least_conn_persistent_zone_worker_connections{zone=\"lcp\"} 3\n"));
        assert!(!out.contains("pid"), "no series per process");
        // Every sample line is "name{labels} value".
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<u64>().unwrap();
        }
    }

    #[test]
    fn prometheus_series_do_not_change_with_the_worker_pids() {
        // A reload replaces every worker: the same connections held by
        // processes with other pids must give the same series.
        let zone = |workers| ZoneInfo {
            name: "lcp".into(),
            size: 65536,
            used: 8192,
            keys: 1,
            reclaimed: 0,
            workers,
            checker: 0,
        };
        let mut e = vec![entry("conn_count:a:127.0.0.1:8081", 5, State::Up)];
        let before = render(
            Format::Prometheus,
            Some(&zone(vec![(101, 5), (102, 0)])),
            &mut e,
        );
        let after = render(
            Format::Prometheus,
            Some(&zone(vec![(201, 0), (202, 5)])),
            &mut e,
        );
        assert_eq!(before, after);
    }
}
