//! Prometheus text exposition (format 0.0.4), the one writer of `/metrics`.
//!
//! A metric family is declared once, as a [`Family`] constant naming its type, help text and
//! label names; samples are written through it with label values only, in the family's order.
//! So a family's labels cannot drift between the places that write it, and the README's list of
//! metrics can be checked against the declarations (`admin/metrics/families.rs`).

use std::fmt::Write;

use super::Buckets;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A family's `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family: what `# HELP` and `# TYPE` say, and the names of its labels.
#[derive(Debug)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub labels: &'static [&'static str],
}

#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// The writer of one family's samples. Its HELP and TYPE lines come with its first sample:
    /// a family without samples (no route has a rate limit, say) is left out, as client
    /// libraries do.
    pub fn family(&mut self, family: &'static Family) -> Samples<'_> {
        Samples {
            out: &mut self.out,
            family,
            started: false,
        }
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// Writes the samples of one family.
pub struct Samples<'a> {
    out: &'a mut String,
    family: &'static Family,
    started: bool,
}

impl Samples<'_> {
    /// One sample; `values` are the family's label values, in the order of its labels.
    pub fn sample(&mut self, values: &[&str], value: impl Into<f64>) -> &mut Self {
        debug_assert_eq!(
            values.len(),
            self.family.labels.len(),
            "{}",
            self.family.name
        );
        self.line("", values, None, value.into());
        self
    }

    /// The `_bucket`, `_sum` and `_count` samples of one histogram series.
    pub fn histogram(&mut self, values: &[&str], buckets: &Buckets) -> &mut Self {
        debug_assert_eq!(self.family.kind, Kind::Histogram, "{}", self.family.name);
        debug_assert_eq!(
            values.len(),
            self.family.labels.len(),
            "{}",
            self.family.name
        );
        let (cumulative, sum) = buckets.cumulative();
        let mut count = 0;
        let mut le = String::new();
        for (bound, n) in &cumulative {
            le.clear();
            if bound.is_infinite() {
                le.push_str("+Inf");
            } else {
                let _ = write!(le, "{bound}");
            }
            self.line("_bucket", values, Some(("le", &le)), *n as f64);
            count = *n;
        }
        self.line("_sum", values, None, sum);
        self.line("_count", values, None, count as f64);
        self
    }

    fn line(&mut self, suffix: &str, values: &[&str], extra: Option<(&str, &str)>, value: f64) {
        let out = &mut *self.out;
        let family = self.family;
        if !self.started {
            self.started = true;
            let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
            let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind.as_str());
        }
        out.push_str(self.family.name);
        out.push_str(suffix);
        let labels = self
            .family
            .labels
            .iter()
            .copied()
            .zip(values.iter().copied());
        let mut labels = labels.chain(extra).peekable();
        if labels.peek().is_some() {
            out.push('{');
            for (i, (k, v)) in labels.enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(k);
                out.push_str("=\"");
                escape_into(out, v);
                out.push('"');
            }
            out.push('}');
        }
        out.push(' ');
        write_value(out, value);
        out.push('\n');
    }
}

fn write_value(out: &mut String, value: f64) {
    if value.is_finite() && value.fract() == 0.0 && value.abs() < 1e15 {
        let _ = write!(out, "{}", value as i64);
    } else if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{value}");
    }
}

fn escape_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    static THINGS: Family = Family {
        name: "x_total",
        kind: Kind::Counter,
        help: "Things.",
        labels: &["a"],
    };
    static PLAIN: Family = Family {
        name: "y",
        kind: Kind::Gauge,
        help: "A gauge.",
        labels: &[],
    };
    static LATENCY: Family = Family {
        name: "z_seconds",
        kind: Kind::Histogram,
        help: "Latency.",
        labels: &["u"],
    };

    /// LATENCY has no sample, so no lines either.
    #[test]
    fn writes_families_and_escaped_labels() {
        let mut e = Exposition::default();
        e.family(&THINGS)
            .sample(&["q\"uo\\te\n"], 3u32)
            .sample(&["b"], 0.25);
        e.family(&LATENCY);
        e.family(&PLAIN).sample(&[], f64::NAN);
        assert_eq!(
            e.finish(),
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{a=\"q\\\"uo\\\\te\\n\"} 3\nx_total{a=\"b\"} 0.25\n\
             # HELP y A gauge.\n# TYPE y gauge\ny NaN\n"
        );
    }

    #[test]
    fn histograms_are_cumulative_and_end_in_inf() {
        let b = Buckets::default();
        b.record(Duration::from_millis(3));
        b.record(Duration::from_secs(100));
        let mut e = Exposition::default();
        e.family(&LATENCY).histogram(&["u1"], &b);
        let text = e.finish();
        assert!(
            text.contains("z_seconds_bucket{u=\"u1\",le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("z_seconds_count{u=\"u1\"} 2\n"), "{text}");
        let first = text
            .lines()
            .find(|l| l.starts_with("z_seconds_bucket"))
            .unwrap();
        assert!(first.ends_with(" 0"), "{first}");
    }
}
