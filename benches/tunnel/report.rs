//! The one table (median and min..max of the repetitions, ratio to direct
//! tonic of the same run), the targets of the issue, and the JSON file.

use std::{collections::BTreeMap, fmt::Write as _};

use crate::{
    format::{json_num, json_opt, json_str, num, Target},
    setups::{Sample, Setup},
    stats::{summarize, Summary},
    workloads::Workload,
};

/// One row group of the table: one figure of one workload.
struct Figure {
    workload: Workload,
    key: &'static str,
    label: &'static str,
    unit: &'static str,
}

const fn fig(
    workload: Workload,
    key: &'static str,
    label: &'static str,
    unit: &'static str,
) -> Figure {
    Figure {
        workload,
        key,
        label,
        unit,
    }
}

const FIGURES: &[Figure] = &[
    fig(
        Workload::UnarySeq,
        "p50_us",
        "unary 100 B, sequential: p50",
        "us",
    ),
    fig(
        Workload::UnarySeq,
        "p99_us",
        "unary 100 B, sequential: p99",
        "us",
    ),
    fig(
        Workload::UnaryConc,
        "calls_per_s",
        "unary 100 B, N callers: throughput",
        "calls/s",
    ),
    fig(
        Workload::UnaryConc,
        "p99_us",
        "unary 100 B, N callers: p99",
        "us",
    ),
    fig(
        Workload::Stream64k,
        "mb_per_s",
        "server stream, 64 KiB messages",
        "MB/s",
    ),
    fig(
        Workload::Stream1m,
        "mb_per_s",
        "server stream, 1 MiB messages",
        "MB/s",
    ),
    fig(
        Workload::ClientStream,
        "mb_per_s",
        "client stream, 64 KiB messages",
        "MB/s",
    ),
    fig(
        Workload::BidiPingpong,
        "round_trips_per_s",
        "bidi ping-pong 100 B",
        "round trips/s",
    ),
    fig(
        Workload::BidiPingpong,
        "p50_us",
        "bidi ping-pong 100 B: p50",
        "us",
    ),
    fig(
        Workload::ManyStreams,
        "open_ping_ms",
        "N bidi streams: open + 1 round trip",
        "ms",
    ),
    fig(
        Workload::ManyStreams,
        "close_ms",
        "N bidi streams: close",
        "ms",
    ),
    fig(
        Workload::ManyStreams,
        "client_kib_per_stream",
        "idle stream RSS, calling side",
        "KiB/stream",
    ),
    fig(
        Workload::ManyStreams,
        "server_kib_per_stream",
        "idle stream RSS, serving side",
        "KiB/stream",
    ),
    fig(
        Workload::Mixed,
        "p99_us",
        "unary N callers + 1 MiB push: p99",
        "us",
    ),
    fig(
        Workload::Mixed,
        "calls_per_s",
        "unary N callers + 1 MiB push: throughput",
        "calls/s",
    ),
    fig(
        Workload::Mixed,
        "push_mb_per_s",
        "1 MiB push under unary load",
        "MB/s",
    ),
];

/// Everything measured in a run.
#[derive(Default)]
pub struct Results {
    values: BTreeMap<(&'static str, Workload, String), Vec<f64>>,
    pub errors: Vec<String>,
    pub skipped: Vec<String>,
}

impl Results {
    pub fn add(&mut self, setup: &Setup, samples: Vec<Sample>) {
        for s in samples {
            self.values
                .entry((setup.key, s.workload, s.key))
                .or_default()
                .push(s.value);
        }
    }

    fn get(&self, setup: &str, w: Workload, key: &str) -> Option<&Vec<f64>> {
        self.values
            .iter()
            .find(|((s, ww, k), _)| *s == setup && *ww == w && k == key)
            .map(|(_, v)| v)
    }

    fn summary(&self, setup: &str, w: Workload, key: &str) -> Option<Summary> {
        summarize(self.get(setup, w, key)?)
    }

    /// Sum of `key` over every workload and repetition of `setup`.
    pub fn total(&self, setup: &str, key: &str) -> f64 {
        self.values
            .iter()
            .filter(|((s, _, k), _)| *s == setup && k == key)
            .flat_map(|(_, v)| v)
            .sum()
    }

    fn median(&self, setup: &str, w: Workload, key: &str) -> Option<f64> {
        self.summary(setup, w, key).map(|s| s.median)
    }
}

fn label(f: &Figure, callers: usize, streams: usize) -> String {
    f.label
        .replace("N callers", &format!("{callers} callers"))
        .replace("N bidi", &format!("{streams} bidi"))
}

/// The table: one row per figure and setup.
pub fn table(r: &Results, setups: &[Setup], callers: usize, streams: usize) -> String {
    let mut rows: Vec<[String; 6]> = vec![[
        "workload".into(),
        "unit".into(),
        "setup".into(),
        "median".into(),
        "min..max".into(),
        "vs direct".into(),
    ]];
    for f in FIGURES {
        let mut first = true;
        for s in setups {
            let Some(sum) = r.summary(s.key, f.workload, f.key) else {
                continue;
            };
            let ratio = r
                .median("direct", f.workload, f.key)
                .filter(|d| *d != 0.0)
                .map_or("-".into(), |d| format!("{:.2}x", sum.median / d));
            rows.push([
                if first {
                    label(f, callers, streams)
                } else {
                    String::new()
                },
                if first { f.unit.into() } else { String::new() },
                s.label.into(),
                num(sum.median),
                format!("{}..{}", num(sum.min), num(sum.max)),
                ratio,
            ]);
            first = false;
        }
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        if i > 1 && !row[0].is_empty() {
            let total = widths.iter().sum::<usize>() + 3 * 5;
            let _ = writeln!(out, "{}", "-".repeat(total));
        }
        let mut line = String::new();
        for (c, (cell, w)) in row.iter().zip(widths).enumerate() {
            let pad = w - cell.chars().count();
            if c >= 3 {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
            if c < 5 {
                line.push_str(" | ");
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
        if i == 0 {
            let total = widths.iter().sum::<usize>() + 3 * 5;
            let _ = writeln!(out, "{}", "=".repeat(total));
        }
    }
    out
}

fn ratio(r: &Results, a: &str, b: &str, w: Workload, key: &str) -> Option<f64> {
    let (a, b) = (r.median(a, w, key)?, r.median(b, w, key)?);
    (b != 0.0).then(|| a / b)
}

pub fn targets(r: &Results, streams: usize) -> Vec<Target> {
    use Workload as W;
    let t = |name: String, value, op, threshold| Target {
        name,
        value,
        op,
        threshold,
    };
    let mut out = vec![
        t(
            "unary throughput: forward / direct".into(),
            ratio(r, "forward", "direct", W::UnaryConc, "calls_per_s"),
            ">=",
            1.0,
        ),
        t(
            "unary throughput: forward / go tunnel".into(),
            ratio(r, "forward", "go-forward", W::UnaryConc, "calls_per_s"),
            ">=",
            1.5,
        ),
        t(
            "unary p50: forward / direct".into(),
            ratio(r, "forward", "direct", W::UnarySeq, "p50_us"),
            "<=",
            1.15,
        ),
    ];
    for (w, size) in [(W::Stream64k, "64 KiB"), (W::Stream1m, "1 MiB")] {
        out.push(t(
            format!("server stream {size}: forward / direct"),
            ratio(r, "forward", "direct", w, "mb_per_s"),
            ">=",
            0.8,
        ));
        out.push(t(
            format!("server stream {size}: forward / go tunnel"),
            ratio(r, "forward", "go-forward", w, "mb_per_s"),
            ">=",
            4.0,
        ));
    }
    out.push(t(
        format!("{streams} streams open+ping: forward / direct"),
        ratio(r, "forward", "direct", W::ManyStreams, "open_ping_ms"),
        "<=",
        1.5,
    ));
    for (side, key) in [
        ("calling", "client_kib_per_stream"),
        ("serving", "server_kib_per_stream"),
    ] {
        let over = r
            .median("forward", W::ManyStreams, key)
            .zip(r.median("direct", W::ManyStreams, key))
            .map(|(f, d)| f - d);
        out.push(t(
            format!("idle stream, {side} side: forward - direct (KiB)"),
            over,
            "<=",
            2.0,
        ));
    }
    let mixed = r
        .median("forward", W::Mixed, "p99_us")
        .zip(r.median("forward", W::UnaryConc, "p99_us"))
        .map(|(with, without)| with / without);
    out.push(t(
        "forward unary p99 with push / without".into(),
        mixed,
        "<=",
        3.0,
    ));
    let reverse: [(W, &str, bool, &str); 8] = [
        (W::UnarySeq, "p50_us", false, "unary p50"),
        (W::UnaryConc, "calls_per_s", true, "unary throughput"),
        (W::Stream64k, "mb_per_s", true, "server stream 64 KiB"),
        (W::Stream1m, "mb_per_s", true, "server stream 1 MiB"),
        (W::ClientStream, "mb_per_s", true, "client stream"),
        (W::BidiPingpong, "round_trips_per_s", true, "bidi ping-pong"),
        (W::ManyStreams, "open_ping_ms", false, "streams open+ping"),
        (W::Mixed, "p99_us", false, "unary p99 with push"),
    ];
    for (w, key, higher, what) in reverse {
        out.push(t(
            format!("reverse / forward, {what}"),
            ratio(r, "reverse", "forward", w, key),
            if higher { ">=" } else { "<=" },
            if higher { 0.9 } else { 1.1 },
        ));
    }
    out
}

/// The whole run as JSON: parameters, every repetition's value, summaries,
/// ratios to direct, targets, errors.
pub fn json(
    r: &Results,
    setups: &[Setup],
    targets: &[Target],
    header: &[(&str, String)],
) -> String {
    let mut out = String::from("{\n");
    for (k, v) in header {
        let _ = writeln!(out, "  {}: {},", json_str(k), v);
    }
    out.push_str("  \"setups\": [");
    let list: Vec<String> = setups
        .iter()
        .map(|s| {
            format!(
                "{{\"key\": {}, \"label\": {}}}",
                json_str(s.key),
                json_str(s.label)
            )
        })
        .collect();
    out.push_str(&list.join(", "));
    out.push_str("],\n  \"results\": [\n");
    let mut rows = Vec::new();
    for ((setup, w, key), values) in &r.values {
        let Some(sum) = summarize(values) else {
            continue;
        };
        let unit = FIGURES
            .iter()
            .find(|f| f.workload == *w && f.key == key)
            .map_or("", |f| f.unit);
        let vs = r
            .median("direct", *w, key)
            .filter(|d| *d != 0.0)
            .map(|d| sum.median / d);
        rows.push(format!(
            "    {{\"setup\": {}, \"workload\": {}, \"metric\": {}, \"unit\": {}, \"values\": [{}], \
             \"median\": {}, \"min\": {}, \"max\": {}, \"vs_direct\": {}}}",
            json_str(setup),
            json_str(w.name()),
            json_str(key),
            json_str(unit),
            values.iter().map(|v| json_num(*v)).collect::<Vec<_>>().join(", "),
            json_num(sum.median),
            json_num(sum.min),
            json_num(sum.max),
            json_opt(vs),
        ));
    }
    out.push_str(&rows.join(",\n"));
    out.push_str("\n  ],\n  \"targets\": [\n");
    let rows: Vec<String> = targets
        .iter()
        .map(|t| {
            format!(
                "    {{\"name\": {}, \"value\": {}, \"op\": {}, \"threshold\": {}, \"met\": {}}}",
                json_str(&t.name),
                json_opt(t.value),
                json_str(t.op),
                json_num(t.threshold),
                t.met().map_or("null".into(), |m| m.to_string()),
            )
        })
        .collect();
    out.push_str(&rows.join(",\n"));
    let strs = |v: &[String]| v.iter().map(|s| json_str(s)).collect::<Vec<_>>().join(", ");
    let _ = write!(
        out,
        "\n  ],\n  \"errors\": [{}],\n  \"skipped\": [{}]\n}}\n",
        strs(&r.errors),
        strs(&r.skipped)
    );
    out
}
