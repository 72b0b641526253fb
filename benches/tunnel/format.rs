//! What both benchmarks (`tunnel`, and the gateway's, which includes this
//! file) print the same way: numbers, targets and their verdicts, JSON
//! values.

use std::fmt::Write as _;

/// A figure with as many decimals as it deserves.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// One target of an issue, judged on medians.
pub struct Target {
    pub name: String,
    /// The measured ratio (or KiB for memory).
    pub value: Option<f64>,
    pub op: &'static str,
    pub threshold: f64,
}

impl Target {
    pub fn met(&self) -> Option<bool> {
        let v = self.value?;
        Some(match self.op {
            ">=" => v >= self.threshold,
            _ => v <= self.threshold,
        })
    }
}

/// One line per target: its value, the bound, and whether it is met.
pub fn targets_text(targets: &[Target]) -> String {
    let width = targets.iter().map(|t| t.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for t in targets {
        let verdict = match t.met() {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "n/a (not measured)",
        };
        let value = t.value.map_or("-".into(), |v| format!("{v:.2}"));
        let _ = writeln!(
            out,
            "  {:<width$} {:>7} {} {:<5} {}",
            t.name, value, t.op, t.threshold, verdict
        );
    }
    out
}

/// A JSON string.
pub fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON number (`null` when not finite).
pub fn json_num(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "null".into()
    }
}

/// A JSON number or `null`.
pub fn json_opt(v: Option<f64>) -> String {
    v.map_or("null".into(), json_num)
}
