//! The status page: every counter, as JSON, in Prometheus' text format, or
//! as an HTML page (`status_html.rs`).
//!
//! Rendering is kept apart from the request handler so that the exact output
//! is tested without nginx.

use std::fmt::Write;

use super::health::State as Health;
use super::status_model::{health_word, why_str};
pub use super::status_model::{Checked, Entry, State, ZoneInfo};

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
            let _ = write!(
                out,
                "],\"checker\":{},\"checks_paused\":{}}}",
                z.checker, z.checks_paused
            );
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
        if let Some(c) = &e.health {
            health_json(&mut out, c);
        }
        out.push('}');
    }
    out.push_str("\n]}\n");
    out
}

/// A checked entry's `health`, `check`, and, when there are any, its
/// `override` (only the overridden keys) and `reported` fields.
fn health_json(out: &mut String, c: &Checked) {
    let v = &c.view;
    let _ = write!(
        out,
        ",\"health\":\"{}\",\"check\":{{\"passes\":{},\"fails\":{},\"last_ms_ago\":",
        health_word(v),
        v.passes,
        v.fails
    );
    match c.last_ms_ago {
        Some(ms) => {
            let _ = write!(out, "{ms}");
        }
        None => out.push_str("null"),
    }
    let _ = write!(
        out,
        ",\"result\":\"{}\",\"status\":{},\"duration_ms\":{}}}",
        why_str(v.why),
        v.http_status,
        v.duration_ms
    );
    let overrides = [("weight", v.weight), ("max_conns", v.max_conns)];
    if overrides.iter().any(|(_, n)| n.is_some()) {
        out.push_str(",\"override\":{");
        let mut sep = "";
        for (name, n) in overrides {
            if let Some(n) = n {
                let _ = write!(out, "{sep}\"{name}\":{n}");
                sep = ",";
            }
        }
        out.push('}');
    }
    if let Some(n) = v.reported {
        let _ = write!(
            out,
            ",\"reported\":{{\"connections\":{n},\"excess\":{}}}",
            v.excess
        );
    }
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

/// The metric families, documented in docs/configuration.md.
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
    check_series(&mut out, &first, entries);
    out
}

/// Active checks' families, documented in docs/configuration.md: all gauges, one
/// series per checked server (labels upstream and server, as the slow
/// start and rebalancing ones: a series must not move when the configured
/// state does).
const CHECK_METRICS: [(&str, &str); 7] = [
    (
        "least_conn_persistent_check_up",
        "Whether the health checks let the server take connections (1: up, draining or \
         no verdict yet; 0: down).",
    ),
    (
        "least_conn_persistent_check_draining",
        "Whether the server's check answer says drain: no new connections, the existing kept.",
    ),
    (
        "least_conn_persistent_check_fails",
        "Health checks of the server failed in a row.",
    ),
    (
        "least_conn_persistent_check_last_age_seconds",
        "Seconds since the server's last health check ended (no sample before the first).",
    ),
    (
        "least_conn_persistent_effective_weight",
        "Weight picks use: the check answer's weight=N, else the configured weight.",
    ),
    (
        "least_conn_persistent_effective_max_conns",
        "max_conns picks use: the check answer's maxconn=N, else the configured \
         max_conns (0: unlimited).",
    ),
    (
        "least_conn_persistent_reported_connections",
        "Live connections the server reported in its last check answer (only when it reports).",
    ),
];

/// Milliseconds as seconds with three decimals.
fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// The `CHECK_METRICS` samples of one checked server (None: no sample).
fn check_samples(e: &Entry, c: &Checked) -> [Option<String>; 7] {
    let v = &c.view;
    [
        Some(u8::from(v.state != Health::Down).to_string()),
        Some(u8::from(health_word(v) == "drain").to_string()),
        Some(v.fails.to_string()),
        c.last_ms_ago.map(seconds),
        Some(v.weight.unwrap_or(e.weight).to_string()),
        Some(v.max_conns.unwrap_or(e.max_conns).to_string()),
        v.reported.map(|n| n.to_string()),
    ]
}

/// Active checks, for the servers that have them.
fn check_series(out: &mut String, first: &str, entries: &[Entry]) {
    let checked: Vec<(&Entry, [Option<String>; 7])> = entries
        .iter()
        .filter_map(|e| Some((e, check_samples(e, e.health.as_ref()?))))
        .collect();
    for (m, (name, help)) in CHECK_METRICS.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (e, samples) in &checked {
            let Some(value) = &samples[m] else {
                continue;
            };
            let (upstream, server) = e.parts();
            let _ = write!(out, "{name}{{{first}upstream=\"");
            label(out, upstream);
            out.push_str("\",server=\"");
            label(out, server);
            let _ = writeln!(out, "\"}} {value}");
        }
    }
}

/// Rebalancing, for the upstreams that have it: each server's closes, and
/// each upstream's state (one series, on if any of its keys says it sheds).
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
    use crate::core::health::Why;
    use crate::core::status_model::tests::{checked, entry, view};
    use crate::core::status_model::{health_word, why_str};
    use crate::core::table::HealthView;
    use crate::core::table::{FLAG_BACKUP, FLAG_DOWN, FLAG_DRAINING};

    /// The JSON of one entry, between `"source":"config"` and its `}`.
    fn health_fields(e: Entry) -> String {
        let out = render(Format::Json, None, &mut [e]);
        let (_, rest) = out.split_once("\"source\":\"config\"").unwrap();
        rest.strip_suffix("}\n]}\n").unwrap().to_string()
    }

    #[test]
    fn json_health_of_a_checked_server() {
        let k = "conn_count:a:10.0.0.1:80";
        assert_eq!(
            health_fields(checked(k, view(), Some(800))),
            ",\"health\":\"up\",\"check\":{\"passes\":3,\"fails\":0,\"last_ms_ago\":800,\
             \"result\":\"ok\",\"status\":200,\"duration_ms\":3}"
        );
        assert_eq!(
            health_fields(entry(k, 9, State::Up)),
            "",
            "unchecked: no field"
        );
        let never = HealthView {
            state: Health::Unchecked,
            passes: 0,
            http_status: 0,
            duration_ms: 0,
            last_ms: 0,
            ..view()
        };
        assert_eq!(
            health_fields(checked(k, never, None)),
            ",\"health\":\"checking\",\"check\":{\"passes\":0,\"fails\":0,\"last_ms_ago\":null,\
             \"result\":\"ok\",\"status\":0,\"duration_ms\":0}"
        );
        let tuned = HealthView {
            weight: Some(5),
            max_conns: Some(10),
            reported: Some(50),
            excess: 41,
            tuned: true,
            ..view()
        };
        assert_eq!(
            health_fields(checked(k, tuned, Some(800))),
            ",\"health\":\"up\",\"check\":{\"passes\":3,\"fails\":0,\"last_ms_ago\":800,\
             \"result\":\"ok\",\"status\":200,\"duration_ms\":3},\
             \"override\":{\"weight\":5,\"max_conns\":10},\
             \"reported\":{\"connections\":50,\"excess\":41}"
        );
        let only_max = HealthView {
            max_conns: Some(0),
            ..view()
        };
        assert!(health_fields(checked(k, only_max, Some(1)))
            .ends_with("},\"override\":{\"max_conns\":0}"));
        let only_weight = HealthView {
            weight: Some(1),
            reported: Some(0),
            ..view()
        };
        assert!(health_fields(checked(k, only_weight, Some(1))).ends_with(
            "},\"override\":{\"weight\":1},\"reported\":{\"connections\":0,\"excess\":0}"
        ));
    }

    #[test]
    fn health_words_and_results() {
        let word = |state, drain| {
            health_word(&HealthView {
                state,
                drain,
                ..view()
            })
        };
        assert_eq!(word(Health::Up, false), "up");
        assert_eq!(word(Health::Up, true), "drain");
        assert_eq!(word(Health::Checking, true), "drain");
        assert_eq!(word(Health::Down, true), "down", "down beats a stale drain");
        assert_eq!(word(Health::Down, false), "down");
        assert_eq!(word(Health::Checking, false), "checking");
        assert_eq!(word(Health::Unchecked, false), "checking");
        let down = HealthView {
            state: Health::Down,
            passes: 0,
            fails: 3,
            why: Why::BadStatus,
            http_status: 503,
            ..view()
        };
        assert!(
            health_fields(checked("conn_count:a:b", down, Some(2))).starts_with(
                ",\"health\":\"down\",\"check\":{\"passes\":0,\"fails\":3,\
                          \"last_ms_ago\":2,\"result\":\"bad status\",\"status\":503,"
            )
        );
        let results = [
            (Why::Ok, "ok"),
            (Why::Refused, "refused"),
            (Why::Reset, "reset"),
            (Why::ClosedEarly, "closed early"),
            (Why::Timeout, "timeout"),
            (Why::BadStatus, "bad status"),
            (Why::BadResponse, "bad response"),
            (Why::NoConnection, "no connection"),
        ];
        for (why, text) in results {
            assert_eq!(why_str(why), text);
        }
    }

    #[test]
    fn json_zone_names_the_checker() {
        let zone = ZoneInfo {
            name: "z".into(),
            size: 65536,
            used: 8192,
            keys: 0,
            reclaimed: 0,
            workers: vec![],
            checker: 0,
            checks_paused: false,
        };
        let out = render(Format::Json, Some(&zone), &mut []);
        assert!(
            out.starts_with(
                "{\"zone\":{\"name\":\"z\",\"size\":65536,\"used\":8192,\
             \"keys\":0,\"reclaimed\":0,\"workers\":[],\"checker\":0,\"checks_paused\":false},"
            ),
            "{out}"
        );
        let zone = ZoneInfo {
            checker: 31337,
            ..zone
        };
        let out = render(Format::Json, Some(&zone), &mut []);
        assert!(
            out.contains("\"workers\":[],\"checker\":31337,\"checks_paused\":false},"),
            "{out}"
        );
        let paused = ZoneInfo {
            checks_paused: true,
            ..zone
        };
        let out = render(Format::Json, Some(&paused), &mut []);
        assert!(
            out.contains("\"checker\":31337,\"checks_paused\":true},"),
            "{out}"
        );
    }

    #[test]
    fn prometheus_check_series() {
        let up = checked("conn_count:a:10.0.0.1:80", view(), Some(812));
        let tuned = HealthView {
            drain: true,
            fails: 0,
            weight: Some(5),
            max_conns: Some(10),
            reported: Some(50),
            excess: 41,
            ..view()
        };
        let drain = checked("conn_count:a:10.0.0.2:80", tuned, Some(1500));
        let down = HealthView {
            state: Health::Down,
            drain: true,
            passes: 0,
            fails: 4,
            why: Why::Refused,
            ..view()
        };
        let down = checked("conn_count:a:10.0.0.3:80", down, Some(0));
        let never = HealthView {
            state: Health::Unchecked,
            passes: 0,
            last_ms: 0,
            ..view()
        };
        let never = checked("conn_count:a:10.0.0.4:80", never, None);
        let plain = entry("conn_count:b:10.0.0.5:80", 1, State::Up);
        let zone = ZoneInfo {
            name: "lcp".into(),
            size: 65536,
            used: 8192,
            keys: 5,
            reclaimed: 0,
            workers: vec![(101, 0)],
            checker: 101,
            checks_paused: false,
        };
        let out = render(
            Format::Prometheus,
            Some(&zone),
            &mut [up, drain, down, never, plain],
        );
        let expect = |name: &str, samples: &[(u8, &str)]| {
            let mut text = format!("# TYPE least_conn_persistent_{name} gauge\n");
            for (server, value) in samples {
                text.push_str(&format!(
                    "least_conn_persistent_{name}{{upstream=\"a\",server=\"10.0.0.{server}:80\"}} {value}\n"
                ));
            }
            assert!(out.contains(&text), "{name}: {text}\nin\n{out}");
        };
        expect("check_up", &[(1, "1"), (2, "1"), (3, "0"), (4, "1")]);
        expect("check_draining", &[(1, "0"), (2, "1"), (3, "0"), (4, "0")]);
        expect("check_fails", &[(1, "0"), (2, "0"), (3, "4"), (4, "0")]);
        expect(
            "check_last_age_seconds",
            &[(1, "0.812"), (2, "1.500"), (3, "0.000")],
        );
        expect(
            "effective_weight",
            &[(1, "2"), (2, "5"), (3, "2"), (4, "2")],
        );
        expect(
            "effective_max_conns",
            &[(1, "0"), (2, "10"), (3, "0"), (4, "0")],
        );
        expect("reported_connections", &[(2, "50")]);
        assert!(out.contains("# HELP least_conn_persistent_check_up "));
        assert!(
            !out.contains("pid"),
            "no series per process, not even the checker's"
        );
        assert!(
            !out.lines()
                .any(|l| l.contains("upstream=\"b\"") && l.contains("check")),
            "no check series for an unchecked server"
        );
        // Every sample line is "name{labels} value", the value a number.
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<f64>().unwrap();
        }
        // The existing series keep their labels.
        assert!(out.contains(
            "least_conn_persistent_weight{upstream=\"a\",server=\"10.0.0.2:80\",state=\"up\"} 2\n"
        ));
    }

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
            checks_paused: false,
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
            checker: 4242,
            checks_paused: false,
        };
        let mut e = vec![
            entry("conn_count:b:[::1]:80", 0, State::Draining),
            entry("conn_count:a:127.0.0.1:8081", 3, State::Up),
        ];
        let out = render(Format::Json, Some(&zone), &mut e);
        assert_eq!(
            out,
            "{\"zone\":{\"name\":\"lcp\",\"size\":1048576,\"used\":12288,\"keys\":2,\"reclaimed\":7,\
             \"workers\":[{\"pid\":101,\"connections\":3},{\"pid\":102,\"connections\":0}],\"checker\":4242,\"checks_paused\":false},\"counters\":[\n\
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
            checks_paused: false,
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
            checks_paused: false,
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
