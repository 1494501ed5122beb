//! Figures for Prometheus: latency histograms, per-request counters, and a writer of the
//! text exposition format (version 0.0.4, what `promtool check metrics` reads).
//!
//! Nothing here is global: the member owns its storage's histogram, the host (the
//! extension's worker) owns its request figures, and the HTTP endpoint renders whatever
//! it is handed. A scrape only copies numbers; it never waits for the Raft thread.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Bucket bounds in seconds for latencies from an fsync to a commit across members:
/// 100 µs to 10 s.
pub const LATENCY_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A latency histogram over [`LATENCY_BUCKETS`] (cumulative counts are made when written).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
    /// Observations.
    pub count: u64,
    /// Their sum, in seconds.
    pub sum: f64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS.iter().position(|b| s <= *b).unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i] += 1;
        self.count += 1;
        self.sum += s;
    }

    /// Cumulative counts per upper bound, `+Inf` last (as Prometheus writes them).
    pub fn cumulative(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        let mut acc = 0;
        self.buckets.iter().enumerate().map(move |(i, n)| {
            acc += n;
            let le = LATENCY_BUCKETS.get(i).map_or_else(|| "+Inf".to_string(), |b| format!("{b}"));
            (le, acc)
        })
    }
}

/// Requests of one kind answered by a member: how many succeeded and failed, and how long
/// they took as the caller saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpFigures {
    /// Succeeded.
    pub ok: u64,
    /// Failed (an error, a timeout, no leader).
    pub failed: u64,
    /// Time from the request to its answer.
    pub latency: Histogram,
}

/// Figures per request kind (`kv_put`, `kv_get_linearizable`, ...), shared by the threads
/// that answer requests.
#[derive(Debug, Default)]
pub struct OpMetrics {
    ops: Mutex<BTreeMap<&'static str, OpFigures>>,
}

impl OpMetrics {
    /// Records one answered request.
    pub fn record(&self, kind: &'static str, ok: bool, took: Duration) {
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let f = ops.entry(kind).or_default();
        if ok {
            f.ok += 1;
        } else {
            f.failed += 1;
        }
        f.latency.observe(took);
    }

    /// A copy of the figures.
    pub fn snapshot(&self) -> BTreeMap<&'static str, OpFigures> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (names end in `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, a sum and a count.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Writes the text exposition format. Each family is announced once (`# HELP`, `# TYPE`),
/// with all its samples after it, as the format requires.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

/// Label pairs of one sample.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

impl Exposition {
    /// An empty page.
    pub fn new() -> Self {
        Self::default()
    }

    /// Announces a family.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        self
    }

    /// One sample of the family announced last.
    pub fn sample(&mut self, name: &str, labels: Labels<'_>, value: f64) -> &mut Self {
        self.out.push_str(name);
        write_labels(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {}", number(value));
        self
    }

    /// A family with one sample and no labels.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    /// The samples of one histogram of the family announced last.
    pub fn histogram(&mut self, name: &str, labels: Labels<'_>, h: &Histogram) -> &mut Self {
        for (le, n) in h.cumulative() {
            let _ = write!(self.out, "{name}_bucket");
            write_labels(&mut self.out, labels, Some(&le));
            let _ = writeln!(self.out, " {n}");
        }
        for (suffix, v) in [("sum", h.sum), ("count", h.count as f64)] {
            let _ = write!(self.out, "{name}_{suffix}");
            write_labels(&mut self.out, labels, None);
            let _ = writeln!(self.out, " {}", number(v));
        }
        self
    }

    /// The page.
    pub fn finish(self) -> String {
        self.out
    }
}

fn write_labels(out: &mut String, labels: Labels<'_>, le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
        if !first {
            out.push(',');
        }
        first = false;
        let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        let _ = write!(out, "{k}=\"{v}\"");
    }
    out.push('}');
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_is_written_cumulative_with_sum_and_count() {
        let mut h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(20));
        let mut e = Exposition::new();
        e.family("x_seconds", Kind::Histogram, "a test").histogram("x_seconds", &[("op", "put")], &h);
        let text = e.finish();
        assert!(text.starts_with("# HELP x_seconds a test\n# TYPE x_seconds histogram\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{op=\"put\",le=\"0.0001\"} 1\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{op=\"put\",le=\"0.005\"} 2\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{op=\"put\",le=\"10\"} 2\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{op=\"put\",le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("x_seconds_count{op=\"put\"} 3\n"), "{text}");
        assert!(text.contains("x_seconds_sum{op=\"put\"} 20.00305"), "{text}");
    }

    #[test]
    fn label_values_are_escaped_and_integers_have_no_fraction() {
        let mut e = Exposition::new();
        e.family("y", Kind::Gauge, "two\nlines").sample("y", &[("why", "a \"b\"\\c")], 3.0);
        e.single("z_total", Kind::Counter, "z", 0.5);
        let text = e.finish();
        assert!(text.contains("# HELP y two\\nlines\n"), "{text}");
        assert!(text.contains("y{why=\"a \\\"b\\\"\\\\c\"} 3\n"), "{text}");
        assert!(text.contains("z_total 0.5\n"), "{text}");
    }

    #[test]
    fn op_metrics_count_outcomes_per_kind() {
        let m = OpMetrics::default();
        m.record("kv_put", true, Duration::from_millis(2));
        m.record("kv_put", false, Duration::from_millis(2));
        m.record("kv_get_linearizable", true, Duration::from_millis(1));
        let s = m.snapshot();
        assert_eq!((s["kv_put"].ok, s["kv_put"].failed, s["kv_put"].latency.count), (1, 1, 2));
        assert_eq!(s["kv_get_linearizable"].ok, 1);
    }
}
