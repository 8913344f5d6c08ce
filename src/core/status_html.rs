//! The status page as one self-contained HTML page (`?format=html`): a
//! table per upstream, with each server's live connections as a bar scaled
//! to the upstream's largest, and the zone's size and use. No script, font
//! or style from elsewhere (it works on an isolated host), no JavaScript at
//! all: the page refreshes itself with `<meta http-equiv="refresh">`, and
//! the bars are `<meter>` elements, so without styles it is still a
//! readable table. Every name it shows is escaped.

use std::fmt::Write;

use super::health::Why;
use super::status_model::{health_word, why_str, Checked, Entry, ZoneInfo};

/// Seconds between two refreshes unless `?refresh=` says otherwise.
pub const DEFAULT_REFRESH: u32 = 5;
/// The longest refresh `?refresh=` accepts, in seconds.
pub const MAX_REFRESH: u32 = 3600;

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}\
table{border-collapse:collapse;min-width:40em}\
th,td{padding:.25em .8em;border-bottom:1px solid #ddd;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}\
meter{width:16em;height:1em}\
.up{color:#176b17}.down{color:#a11}.draining{color:#a60}.backup{color:#555}.fallback{color:#a11}\
.drain{color:#a60}.checking{color:#555}\
.zone{color:#444}small{color:#666}";

/// `&`, `<`, `>`, `"` and `'` as entities: names come from configurations
/// and Lua, and end up in text and attributes.
pub fn escape(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

fn bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / f64::from(1 << 10)),
        n => format!("{n} B"),
    }
}

fn zone_line(out: &mut String, zone: Option<&ZoneInfo>) {
    out.push_str("<p class=\"zone\">");
    let Some(z) = zone else {
        out.push_str(
            "No <code>least_conn_persistent_zone</code>: every count is per worker.</p>\n",
        );
        return;
    };
    out.push_str("Zone <b id=\"zone-name\">");
    escape(out, &z.name);
    let held: u64 = z.workers.iter().map(|(_, c)| c).sum();
    let _ = writeln!(
        out,
        "</b>: <span id=\"zone-used\">{}</span> used of {} ({:.1}%), {} keys; \
         {} worker process(es) recorded, holding {}; \
         <span id=\"zone-reclaimed\">{}</span> connection(s) reclaimed from workers that died.</p>",
        bytes(z.used),
        bytes(z.size),
        z.used as f64 * 100.0 / z.size.max(1) as f64,
        z.keys,
        z.workers.len(),
        held,
        z.reclaimed
    );
    if z.checker != 0 && z.checks_paused {
        let _ = writeln!(
            out,
            "<p class=\"zone\">Health checks are <strong>paused</strong> in process \
             <span id=\"zone-checker\">{}</span>: no worker has a connection to spare.</p>",
            z.checker
        );
    } else if z.checker != 0 {
        let _ = writeln!(
            out,
            "<p class=\"zone\">Health checks run in process \
             <span id=\"zone-checker\">{}</span>.</p>",
            z.checker
        );
    }
}

/// The columns a table of an upstream with health checks adds.
const CHECK_HEADS: &str = "<th>health</th><th>last check</th><th>capacity</th><th>reported</th>";

/// A checked row's data attributes: its health and last check, and what
/// the answers override or report, when they do.
fn check_attributes(out: &mut String, c: &Checked) {
    let v = &c.view;
    let _ = write!(
        out,
        " data-health=\"{}\" data-passes=\"{}\" data-fails=\"{}\"",
        health_word(v),
        v.passes,
        v.fails
    );
    if let Some(ms) = c.last_ms_ago {
        let _ = write!(
            out,
            " data-check=\"{}\" data-check-age-ms=\"{ms}\"",
            why_str(v.why)
        );
    }
    if let Some(n) = v.weight {
        let _ = write!(out, " data-override-weight=\"{n}\"");
    }
    if let Some(n) = v.max_conns {
        let _ = write!(out, " data-override-max-conns=\"{n}\"");
    }
    if let Some(n) = v.reported {
        let _ = write!(out, " data-reported=\"{n}\" data-excess=\"{}\"", v.excess);
    }
}

/// "0.8 s ago, ok, 3 ms" (a bad status names it), or a dash before the
/// first check.
fn last_check(c: &Checked) -> String {
    let Some(ms) = c.last_ms_ago else {
        return "\u{2014}".to_string();
    };
    let v = &c.view;
    let result = match v.why {
        Why::BadStatus => format!("bad status {}", v.http_status),
        why => why_str(why).to_string(),
    };
    format!(
        "{:.1} s ago, {result}, {} ms",
        ms as f64 / 1000.0,
        v.duration_ms
    )
}

/// "weight 5 (configured 2), max_conns 10 (configured 0)": what the check
/// answers override, or a dash.
fn capacity(e: &Entry, c: &Checked) -> String {
    let parts: Vec<String> = [
        ("weight", c.view.weight, e.weight),
        ("max_conns", c.view.max_conns, e.max_conns),
    ]
    .iter()
    .filter_map(|&(name, over, conf)| over.map(|n| format!("{name} {n} (configured {conf})")))
    .collect();
    if parts.is_empty() {
        "\u{2014}".to_string()
    } else {
        parts.join(", ")
    }
}

/// The check cells of a row (dashes for a server without checks in an
/// upstream with them: one counted per worker).
fn check_cells(out: &mut String, e: &Entry) {
    let Some(c) = &e.health else {
        out.push_str("<td>\u{2014}</td>".repeat(4).as_str());
        return;
    };
    let word = health_word(&c.view);
    let reported = match c.view.reported {
        Some(n) => format!("{n} (+{})", c.view.excess),
        None => "\u{2014}".to_string(),
    };
    let _ = write!(
        out,
        "<td class=\"{word}\">{word}</td><td>{}</td><td>{}</td><td class=\"n\">{reported}</td>",
        last_check(c),
        capacity(e, c)
    );
}

fn upstream_table(out: &mut String, name: &str, entries: &[Entry]) {
    let largest = entries.iter().map(|e| e.count).max().unwrap_or(0).max(1);
    // No check columns in a table without checks.
    let checks = entries.iter().any(|e| e.health.is_some());
    out.push_str("<h2>upstream <code>");
    escape(out, name);
    out.push_str("</code></h2>\n<table data-upstream=\"");
    escape(out, name);
    out.push_str(
        "\">\n<thead><tr><th>server</th><th>state</th><th>connections</th><th></th>\
         <th>weight</th><th>max_conns</th>",
    );
    if checks {
        out.push_str(CHECK_HEADS);
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for e in entries {
        let (_, server) = e.parts();
        let state = e.state.as_str();
        out.push_str("<tr data-server=\"");
        escape(out, server);
        let _ = write!(out, "\" data-state=\"{state}\" data-count=\"{}\"", e.count);
        if let Some(p) = e.ramping {
            let _ = write!(out, " data-ramping=\"{p}\"");
        }
        if let Some(r) = e.rebalance {
            let _ = write!(
                out,
                " data-shed=\"{}\" data-rebalancing=\"{}\"",
                r.shed, r.shedding
            );
        }
        if let Some(c) = &e.health {
            check_attributes(out, c);
        }
        out.push_str("><td>");
        escape(out, server);
        if e.lua {
            out.push_str(" <small>(Lua)</small>");
        }
        let mut ramping = e
            .ramping
            .map_or_else(String::new, |p| format!(", ramping {p}%"));
        if let Some(r) = e.rebalance.filter(|r| r.shed > 0 || r.shedding) {
            let now = if r.shedding { ", rebalancing" } else { "" };
            let _ = write!(ramping, "{now}, {} shed", r.shed);
        }
        let _ = write!(
            out,
            "</td><td class=\"{state}\">{state}{ramping}</td><td class=\"n\">{count}</td>\
             <td><meter min=\"0\" max=\"{largest}\" value=\"{count}\">{count}</meter></td>\
             <td class=\"n\">{weight}</td><td class=\"n\">{max_conns}</td>",
            count = e.count,
            weight = e.weight,
            max_conns = if e.max_conns == 0 {
                "-".to_string()
            } else {
                e.max_conns.to_string()
            },
        );
        if checks {
            check_cells(out, e);
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
}

/// The page. `entries` sorted by key (so grouped by upstream); `refresh`:
/// seconds between reloads, 0 for none.
pub fn render_html(
    subsystem: Option<&str>,
    zone: Option<&ZoneInfo>,
    entries: &[Entry],
    refresh: u32,
) -> String {
    let mut out = String::with_capacity(2048 + entries.len() * 400);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
    if refresh > 0 {
        let _ = writeln!(out, "<meta http-equiv=\"refresh\" content=\"{refresh}\">");
    }
    let title = match subsystem {
        Some(s) => format!("least_conn_persistent ({s})"),
        None => "least_conn_persistent".to_string(),
    };
    out.push_str("<title>");
    escape(&mut out, &title);
    let _ = writeln!(out, "</title>\n<style>{STYLE}</style>\n</head><body>");
    out.push_str("<h1>");
    escape(&mut out, &title);
    out.push_str("</h1>\n");
    zone_line(&mut out, zone);
    if refresh > 0 {
        let _ = writeln!(
            out,
            "<p><small>Refreshes every {refresh} s (<code>?format=html&amp;refresh=N</code>; \
             0 stops it).</small></p>"
        );
    }
    for group in entries.chunk_by(|a, b| a.parts().0 == b.parts().0) {
        upstream_table(&mut out, group[0].parts().0, group);
    }
    if entries.is_empty() {
        out.push_str("<p>No counters.</p>\n");
    }
    out.push_str("</body></html>\n");
    out
}

/// `?refresh=`: whole seconds from 0 to `MAX_REFRESH`.
pub fn parse_refresh(arg: Option<&[u8]>) -> Option<u32> {
    let Some(text) = arg else {
        return Some(DEFAULT_REFRESH);
    };
    if text.is_empty() || text.len() > 4 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u32 = std::str::from_utf8(text).ok()?.parse().ok()?;
    (n <= MAX_REFRESH).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::health::State as Health;
    use crate::core::status_model::tests::entry;
    use crate::core::status_model::tests::{checked, view};
    use crate::core::status_model::State;
    use crate::core::table::HealthView;

    #[test]
    fn names_are_escaped_in_text_and_attributes() {
        let e = [entry("conn_count:<u&\"x'>:127.0.0.1:1", 1, State::Up)];
        let page = render_html(None, None, &e, 5);
        assert!(page.contains("<code>&lt;u&amp;&quot;x&#39;&gt;</code>"));
        assert!(page.contains("data-upstream=\"&lt;u&amp;&quot;x&#39;&gt;\""));
        assert!(!page.contains("<u&"));
    }

    #[test]
    fn one_table_per_upstream_bars_scaled_to_its_largest() {
        let e = [
            entry("conn_count:a:10.0.0.1:80", 4, State::Up),
            entry("conn_count:a:10.0.0.2:80", 2, State::Draining),
            entry("conn_count:b:10.0.0.3:80", 0, State::Up),
        ];
        let page = render_html(None, None, &e, 5);
        assert_eq!(page.matches("<table ").count(), 2);
        assert!(page.contains("<meter min=\"0\" max=\"4\" value=\"2\">2</meter>"));
        assert!(
            page.contains("data-server=\"10.0.0.2:80\" data-state=\"draining\" data-count=\"2\"")
        );
        // An upstream at rest still draws empty bars (max 1, not 0).
        assert!(page.contains("<meter min=\"0\" max=\"1\" value=\"0\">0</meter>"));
    }

    #[test]
    fn refresh_and_zone() {
        let zone = ZoneInfo {
            name: "lcp".into(),
            size: 1 << 20,
            used: 36864,
            keys: 3,
            reclaimed: 2,
            workers: vec![(1, 5), (2, 7)],
            checker: 0,
            checks_paused: false,
        };
        let page = render_html(Some("stream"), Some(&zone), &[], 2);
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"2\">"));
        assert!(page.contains("<title>least_conn_persistent (stream)</title>"));
        assert!(page.contains("36.0 KiB</span> used of 1.0 MiB (3.5%), 3 keys"));
        assert!(page.contains("holding 12"));
        assert!(page.contains("<span id=\"zone-reclaimed\">2</span>"));
        assert!(!render_html(None, None, &[], 0).contains("http-equiv"));
        // Self-contained: nothing fetched from elsewhere.
        assert!(!page.contains("src=") && !page.contains("href="));
    }

    #[test]
    fn checked_servers_show_health_last_check_capacity_and_reported() {
        let tuned = HealthView {
            weight: Some(5),
            max_conns: Some(10),
            reported: Some(50),
            excess: 41,
            ..view()
        };
        let down = HealthView {
            state: Health::Down,
            passes: 0,
            fails: 3,
            why: Why::BadStatus,
            http_status: 503,
            duration_ms: 12,
            ..view()
        };
        let never = HealthView {
            state: Health::Unchecked,
            passes: 0,
            ..view()
        };
        let e = [
            checked("conn_count:a:10.0.0.1:80", view(), Some(800)),
            checked("conn_count:a:10.0.0.2:80", tuned, Some(1250)),
            checked("conn_count:a:10.0.0.3:80", down, Some(40)),
            checked("conn_count:a:10.0.0.4:80", never, None),
            entry("conn_count:a:10.0.0.5:80", 1, State::Fallback),
        ];
        let page = render_html(None, None, &e, 5);
        assert!(page.contains(
            "<th>max_conns</th><th>health</th><th>last check</th><th>capacity</th>\
             <th>reported</th></tr>"
        ));
        assert!(page.contains(
            "data-server=\"10.0.0.1:80\" data-state=\"up\" data-count=\"9\" data-health=\"up\" \
             data-passes=\"3\" data-fails=\"0\" data-check=\"ok\" data-check-age-ms=\"800\">"
        ));
        assert!(page.contains(
            "<td class=\"up\">up</td><td>0.8 s ago, ok, 3 ms</td><td>\u{2014}</td>\
             <td class=\"n\">\u{2014}</td></tr>"
        ));
        assert!(page.contains(
            "data-check-age-ms=\"1250\" data-override-weight=\"5\" data-override-max-conns=\"10\" \
             data-reported=\"50\" data-excess=\"41\">"
        ));
        assert!(page.contains(
            "<td>1.2 s ago, ok, 3 ms</td><td>weight 5 (configured 2), max_conns 10 (configured 0)</td>\
             <td class=\"n\">50 (+41)</td></tr>"
        ));
        assert!(page.contains(
            "data-health=\"down\" data-passes=\"0\" data-fails=\"3\" data-check=\"bad status\""
        ));
        assert!(
            page.contains("<td class=\"down\">down</td><td>0.0 s ago, bad status 503, 12 ms</td>")
        );
        assert!(
            page.contains("data-health=\"checking\" data-passes=\"0\" data-fails=\"0\">"),
            "never checked: no data-check"
        );
        assert!(
            page.contains("<td class=\"checking\">checking</td><td>\u{2014}</td><td>\u{2014}</td>")
        );
        // A server of the upstream counted per worker has no checks: dashes.
        let fallback = page.split("data-server=\"10.0.0.5:80\"").nth(1).unwrap();
        let fallback = fallback.split("</tr>").next().unwrap();
        assert!(!fallback.contains("data-health"));
        assert!(
            fallback.ends_with(&"<td>\u{2014}</td>".repeat(4)),
            "{fallback}"
        );
        // Only one override: only it is shown.
        let one = HealthView {
            drain: true,
            max_conns: Some(0),
            ..view()
        };
        let page = render_html(None, None, &[checked("conn_count:a:b:1", one, Some(5))], 5);
        assert!(page.contains("data-health=\"drain\""));
        assert!(page.contains("<td class=\"drain\">drain</td>"));
        assert!(page.contains("<td>max_conns 0 (configured 0)</td>"));
        assert!(!page.contains("data-override-weight"));
    }

    #[test]
    fn tables_without_checks_have_no_check_columns() {
        let e = [
            checked("conn_count:a:10.0.0.1:80", view(), Some(800)),
            entry("conn_count:b:10.0.0.2:80", 1, State::Up),
        ];
        let page = render_html(None, None, &e, 5);
        assert_eq!(page.matches("<th>health</th>").count(), 1);
        let b = page.split("data-upstream=\"b\"").nth(1).unwrap();
        assert!(!b.contains("<th>health</th>") && !b.contains("\u{2014}"));
        assert!(b.contains("<td class=\"n\">2</td><td class=\"n\">-</td></tr>"));
        let plain = render_html(None, None, &e[1..], 5);
        assert!(!plain.contains("health") && !plain.contains("data-check"));
    }

    #[test]
    fn the_zone_line_names_the_checker() {
        let zone = ZoneInfo {
            name: "lcp".into(),
            size: 1 << 20,
            used: 4096,
            keys: 0,
            reclaimed: 0,
            workers: vec![(1, 0)],
            checker: 4242,
            checks_paused: false,
        };
        let page = render_html(None, Some(&zone), &[], 0);
        assert!(
            page.contains("Health checks run in process <span id=\"zone-checker\">4242</span>.")
        );
        let paused = ZoneInfo {
            checks_paused: true,
            ..zone.clone()
        };
        assert!(render_html(None, Some(&paused), &[], 0).contains(
            "Health checks are <strong>paused</strong> in process <span id=\"zone-checker\">4242</span>"
        ));
        let none = ZoneInfo { checker: 0, ..zone };
        assert!(!render_html(None, Some(&none), &[], 0).contains("zone-checker"));
    }

    #[test]
    fn refresh_argument() {
        assert_eq!(parse_refresh(None), Some(DEFAULT_REFRESH));
        assert_eq!(parse_refresh(Some(b"0")), Some(0));
        assert_eq!(parse_refresh(Some(b"30")), Some(30));
        assert_eq!(parse_refresh(Some(b"3601")), None);
        assert_eq!(parse_refresh(Some(b"-1")), None);
        assert_eq!(parse_refresh(Some(b"")), None);
        assert_eq!(parse_refresh(Some(b"99999999999")), None);
    }
}
