//! The table (median and min..max of the repetitions, ratios to direct
//! tonic and to frp of the same run), the targets, and the JSON file.

use std::{collections::BTreeMap, fmt::Write as _};

use crate::{
    format::{json_num, json_opt, json_str, num, Target},
    stats::{summarize, Summary},
};

/// The setups, in table order: (key, label).
pub const SETUPS: [(&str, &str); 7] = [
    ("direct", "direct tonic"),
    ("gateway", "hub -> agent"),
    ("frp", "frps -> frpc"),
    ("proxies", "two plain proxies"),
    ("h2-floor", "two bare h2 relays"),
    ("relayed", "hub A -> hub B -> agent"),
    ("relayed-grpc", "same, relays as plain gRPC"),
];

/// One figure: a row group of the table.
pub struct Figure {
    pub key: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
}

pub const UNARY_P50: &str = "unary_p50_us";
pub const UNARY_P99: &str = "unary_p99_us";
pub const UNARY_CONC: &str = "unary_conc_calls_per_s";
pub const STREAM_1M: &str = "stream_1m_mb_per_s";
pub const CLIENT_STREAM: &str = "client_stream_64k_mb_per_s";
pub const BIDI: &str = "bidi_pingpong_round_trips_per_s";
pub const CPU_SEQ: &str = "unary_seq_cpu_us_per_call";
pub const CPU_CONC: &str = "unary_conc_cpu_us_per_call";
pub const MACHINE_CONC: &str = "unary_conc_machine_cpu_us_per_call";
pub const IDLE_CONC: &str = "unary_conc_idle_percent";
pub const HUB_MEMORY: &str = "hub_kib_per_idle_agent";
pub const DIR_BYTES: &str = "directory_bytes_per_key";
pub const DIR_PUBLISH: &str = "directory_publish_us_per_key";
pub const DIR_LOOKUP_P50: &str = "directory_lookup_p50_us";
pub const DIR_LOOKUP_P99: &str = "directory_lookup_p99_us";

pub const FIGURES: [Figure; 15] = [
    Figure {
        key: UNARY_P50,
        label: "unary 100 B, sequential: p50",
        unit: "us",
    },
    Figure {
        key: UNARY_P99,
        label: "unary 100 B, sequential: p99",
        unit: "us",
    },
    Figure {
        key: UNARY_CONC,
        label: "unary 100 B, N callers: throughput",
        unit: "calls/s",
    },
    Figure {
        key: STREAM_1M,
        label: "server stream, 1 MiB messages",
        unit: "MB/s",
    },
    Figure {
        key: CLIENT_STREAM,
        label: "client stream, 64 KiB messages",
        unit: "MB/s",
    },
    Figure {
        key: BIDI,
        label: "bidi ping-pong, 100 B",
        unit: "round trips/s",
    },
    Figure {
        key: CPU_SEQ,
        label: "CPU in the middle, sequential unary",
        unit: "us/call",
    },
    Figure {
        key: CPU_CONC,
        label: "CPU in the middle, N callers unary",
        unit: "us/call",
    },
    Figure {
        key: MACHINE_CONC,
        label: "CPU of the machine, N callers unary",
        unit: "us/call",
    },
    Figure {
        key: IDLE_CONC,
        label: "CPUs idle, N callers unary",
        unit: "%",
    },
    Figure {
        key: HUB_MEMORY,
        label: "RSS per idle agent / frp client (A)",
        unit: "KiB/agent",
    },
    Figure {
        key: DIR_BYTES,
        label: "store memory per key (K keys)",
        unit: "B/key",
    },
    Figure {
        key: DIR_PUBLISH,
        label: "publish, batches of 1000 (K keys)",
        unit: "us/key",
    },
    Figure {
        key: DIR_LOOKUP_P50,
        label: "directory lookup p50 (K keys)",
        unit: "us",
    },
    Figure {
        key: DIR_LOOKUP_P99,
        label: "directory lookup p99 (K keys)",
        unit: "us",
    },
];

/// Everything measured in a run: every repetition's value of every figure
/// of every setup.
#[derive(Default)]
pub struct Results {
    values: BTreeMap<(&'static str, &'static str), Vec<f64>>,
    pub errors: Vec<String>,
    /// Lines printed under the table (memory details, limits).
    pub notes: Vec<String>,
}

impl Results {
    pub fn add(&mut self, setup: &'static str, figure: &'static str, value: f64) {
        self.values.entry((setup, figure)).or_default().push(value);
    }

    fn summary(&self, setup: &str, figure: &str) -> Option<Summary> {
        summarize(self.values.get(&(setup, figure))?)
    }

    fn median(&self, setup: &str, figure: &str) -> Option<f64> {
        self.summary(setup, figure).map(|s| s.median)
    }

    fn ratio(&self, figure: &str) -> Option<f64> {
        self.ratio_of("gateway", "direct", figure)
    }

    /// The gateway's median over frp's.
    fn vs_frp(&self, figure: &str) -> Option<f64> {
        self.ratio_of("gateway", "frp", figure)
    }

    fn ratio_of(&self, a: &str, b: &str, figure: &str) -> Option<f64> {
        let (a, b) = (self.median(a, figure)?, self.median(b, figure)?);
        (b != 0.0).then(|| a / b)
    }
}

/// The table: one row per figure and setup.
pub fn table(r: &Results, callers: usize, agents: usize, keys: usize) -> String {
    let mut rows: Vec<[String; 7]> = vec![[
        "workload".into(),
        "unit".into(),
        "setup".into(),
        "median".into(),
        "min..max".into(),
        "vs direct".into(),
        "vs frp".into(),
    ]];
    for f in &FIGURES {
        let mut first = true;
        for (key, label) in SETUPS {
            let Some(sum) = r.summary(key, f.key) else {
                continue;
            };
            let ratio_to = |base: &str| {
                r.median(base, f.key)
                    .filter(|d| *d != 0.0)
                    .map_or("-".into(), |d| format!("{:.2}x", sum.median / d))
            };
            rows.push([
                if first {
                    f.label
                        .replace("N callers", &format!("{callers} callers"))
                        .replace("A agents", &format!("{agents} agents"))
                        .replace("K keys", &format!("{keys} keys"))
                } else {
                    String::new()
                },
                if first { f.unit.into() } else { String::new() },
                label.into(),
                num(sum.median),
                format!("{}..{}", num(sum.min), num(sum.max)),
                ratio_to("direct"),
                ratio_to("frp"),
            ]);
            first = false;
        }
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let total = widths.iter().sum::<usize>() + 3 * 6;
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        if i > 1 && !row[0].is_empty() {
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
            if c < 6 {
                line.push_str(" | ");
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
        if i == 0 {
            let _ = writeln!(out, "{}", "=".repeat(total));
        }
    }
    out
}

/// The targets: the gateway against direct tonic (the earlier ones),
/// against frp in the same run (issue 21: match or beat it everywhere),
/// and relayed against same-hub.
pub fn targets(r: &Results) -> Vec<Target> {
    let frp = |name: &str, figure: &str, op: &'static str| Target {
        name: format!("{name}: gateway / frp"),
        value: r.vs_frp(figure),
        op,
        threshold: 1.0,
    };
    vec![
        Target {
            name: "unary p50: gateway / direct".into(),
            value: r.ratio(UNARY_P50),
            op: "<=",
            threshold: 2.0,
        },
        Target {
            name: "unary throughput: gateway / direct".into(),
            value: r.ratio(UNARY_CONC),
            op: ">=",
            threshold: 0.8,
        },
        Target {
            name: "1 MiB server stream: gateway / direct".into(),
            value: r.ratio(STREAM_1M),
            op: ">=",
            threshold: 0.6,
        },
        Target {
            name: "hub RSS per idle agent (KiB)".into(),
            value: r.median("gateway", HUB_MEMORY),
            op: "<=",
            threshold: 64.0,
        },
        frp("unary p50", UNARY_P50, "<="),
        frp("unary p99", UNARY_P99, "<="),
        frp("unary throughput", UNARY_CONC, ">="),
        frp("1 MiB server stream", STREAM_1M, ">="),
        frp("64 KiB client stream", CLIENT_STREAM, ">="),
        frp("bidi ping-pong", BIDI, ">="),
        frp("CPU per sequential unary call", CPU_SEQ, "<="),
        frp("CPU per concurrent unary call", CPU_CONC, "<="),
        frp("memory per idle agent / client", HUB_MEMORY, "<="),
        Target {
            name: "unary p50: relayed / same hub (--cluster)".into(),
            value: r.ratio_of("relayed", "gateway", UNARY_P50),
            op: "<=",
            threshold: 1.3,
        },
        Target {
            name: "unary throughput: relayed / same hub (--cluster)".into(),
            value: r.ratio_of("relayed", "gateway", UNARY_CONC),
            op: ">=",
            threshold: 0.7,
        },
    ]
}

/// The whole run as JSON: parameters, every repetition's value, summaries,
/// ratios to direct, targets, notes and errors.
pub fn json(r: &Results, targets: &[Target], header: &[(&str, String)]) -> String {
    let mut out = String::from("{\n");
    for (k, v) in header {
        let _ = writeln!(out, "  {}: {},", json_str(k), v);
    }
    out.push_str("  \"results\": [\n");
    let mut rows = Vec::new();
    for f in &FIGURES {
        for (setup, _) in SETUPS {
            let (Some(values), Some(sum)) =
                (r.values.get(&(setup, f.key)), r.summary(setup, f.key))
            else {
                continue;
            };
            let vs = |base: &str| {
                r.median(base, f.key)
                    .filter(|d| *d != 0.0)
                    .map(|d| sum.median / d)
            };
            rows.push(format!(
                "    {{\"setup\": {}, \"metric\": {}, \"unit\": {}, \"values\": [{}], \
                 \"median\": {}, \"min\": {}, \"max\": {}, \"vs_direct\": {}, \
                 \"vs_frp\": {}}}",
                json_str(setup),
                json_str(f.key),
                json_str(f.unit),
                values
                    .iter()
                    .map(|v| json_num(*v))
                    .collect::<Vec<_>>()
                    .join(", "),
                json_num(sum.median),
                json_num(sum.min),
                json_num(sum.max),
                json_opt(vs("direct")),
                json_opt(vs("frp")),
            ));
        }
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
        "\n  ],\n  \"notes\": [{}],\n  \"errors\": [{}]\n}}\n",
        strs(&r.notes),
        strs(&r.errors)
    );
    out
}
