//! Prometheus metrics, in the text exposition format on the admin port's `/metrics`.
//!
//! The four `flyte_connector_*` families are flytekit's, with its names, types (summaries:
//! `_count` and `_sum`) and labels, so dashboards built for the Python server keep working.
//! Like flytekit, only create / get / delete / do are counted in them. The `agent_host_*`
//! families are the host's own. A hand-written registry: it is small, and the crates at hand
//! have no summary type.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::Duration,
};

/// Label values joined by a separator that cannot appear in them.
const SEP: char = '\u{1f}';

/// Runs `f` with the joined key of `labels`, built in a per-thread buffer: an update of an
/// existing series allocates nothing (a call updates two or three series).
fn with_key<R>(labels: &[&str], f: impl FnOnce(&str) -> R) -> R {
    thread_local!(static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) });
    KEY.with(|key| {
        let mut key = key.borrow_mut();
        key.clear();
        for (i, label) in labels.iter().enumerate() {
            if i > 0 {
                key.push(SEP);
            }
            key.push_str(label);
        }
        f(&key)
    })
}

fn values(key: &str) -> Vec<String> {
    if key.is_empty() {
        vec![String::new()]
    } else {
        key.split(SEP).map(str::to_string).collect()
    }
}

/// A family of counters keyed by label values.
#[derive(Debug, Default)]
struct Counters(Mutex<BTreeMap<String, u64>>);

impl Counters {
    fn add(&self, labels: &[&str], n: u64) {
        with_key(labels, |key| {
            let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
            match m.get_mut(key) {
                Some(v) => *v += n,
                None => {
                    m.insert(key.to_string(), n);
                }
            }
        })
    }

    fn snapshot(&self) -> Vec<(Vec<String>, u64)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (values(k), *v)).collect()
    }
}

/// A family of summaries (count and sum) keyed by label values.
#[derive(Debug, Default)]
struct Summaries(Mutex<BTreeMap<String, (u64, f64)>>);

impl Summaries {
    fn observe(&self, labels: &[&str], value: f64) {
        with_key(labels, |key| {
            let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
            match m.get_mut(key) {
                Some((count, sum)) => {
                    *count += 1;
                    *sum += value;
                }
                None => {
                    m.insert(key.to_string(), (1, value));
                }
            }
        })
    }

    fn snapshot(&self) -> Vec<(Vec<String>, (u64, f64))> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (values(k), *v)).collect()
    }
}

/// The host's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    success: Counters,
    failure: Counters,
    latency: Summaries,
    input_bytes: Summaries,
    loads: Counters,
    load_failures: Counters,
    panics: Counters,
    leaked: Counters,
    /// Calls the host refused because an agent was at its concurrency limit.
    pub rejected: AtomicU64,
}

/// Gauges read at scrape time from the host's state.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Serving plugin versions.
    pub plugins_serving: usize,
    /// Mapped plugin libraries (never unmapped).
    pub mapped_libraries: usize,
    /// Retired versions still alive (calls in flight).
    pub draining_versions: usize,
    /// Calls in flight by (plugin, agent).
    pub in_flight: Vec<(String, String, i64)>,
    /// Retired versions reported as leaked and still holding on (calls, threads or shutdown).
    pub leaked_generations: usize,
    /// How the plugin directory is followed right now: "notify" or "poll" (empty: not yet
    /// known, nothing rendered).
    pub watch_mode: &'static str,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn labels(names: &[&str], values: &[String]) -> String {
    let pairs: Vec<String> = names.iter().zip(values).map(|(n, v)| format!("{n}=\"{}\"", escape(v))).collect();
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

impl Metrics {
    /// An RPC of flytekit's instrumented operations finished.
    pub fn request(&self, task_type: &str, operation: &str, elapsed: Duration, error_code: Option<&str>) {
        match error_code {
            None => self.success.add(&[task_type, operation], 1),
            Some(code) => self.failure.add(&[task_type, operation, code], 1),
        }
        self.latency.observe(&[task_type, operation], elapsed.as_secs_f64());
    }

    /// The size of a CreateTask's (or ExecuteTaskSync's) inputs.
    pub fn input_bytes(&self, task_type: &str, bytes: usize) {
        self.input_bytes.observe(&[task_type], bytes as f64);
    }

    /// A plugin version was loaded.
    pub fn loaded(&self, plugin: &str) {
        self.loads.add(&[plugin], 1);
    }

    /// A plugin file was refused.
    pub fn load_failed(&self, reason: &str) {
        self.load_failures.add(&[reason], 1);
    }

    /// A call ended in a panic inside the plugin.
    pub fn panicked(&self, plugin: &str) {
        self.panics.add(&[plugin], 1);
    }

    /// A retired version of `plugin` still held calls, threads or its shutdown at the drain
    /// deadline.
    pub fn generation_leaked(&self, plugin: &str) {
        self.leaked.add(&[plugin], 1);
    }

    /// The exposition text.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let counters = |out: &mut String, name: &str, help: &str, names: &[&str], family: &Counters| {
            header(out, name, "counter", help);
            for (values, v) in family.snapshot() {
                let _ = writeln!(out, "{name}{} {v}", labels(names, &values));
            }
        };
        let summaries = |out: &mut String, name: &str, help: &str, names: &[&str], family: &Summaries| {
            header(out, name, "summary", help);
            for (values, (count, sum)) in family.snapshot() {
                let l = labels(names, &values);
                let _ = writeln!(out, "{name}_count{l} {count}\n{name}_sum{l} {sum}");
            }
        };
        counters(
            &mut out,
            "flyte_connector_requests_success_total",
            "Total number of successful requests",
            &["task_type", "operation"],
            &self.success,
        );
        counters(
            &mut out,
            "flyte_connector_requests_failure_total",
            "Total number of failed requests",
            &["task_type", "operation", "error_code"],
            &self.failure,
        );
        summaries(
            &mut out,
            "flyte_connector_request_latency_seconds",
            "Time spent processing connector request",
            &["task_type", "operation"],
            &self.latency,
        );
        summaries(&mut out, "flyte_connector_input_literal_bytes", "Size of input literal", &["task_type"], &self.input_bytes);
        counters(&mut out, "agent_host_plugin_loads_total", "Plugin versions loaded", &["plugin"], &self.loads);
        counters(&mut out, "agent_host_plugin_load_failures_total", "Plugin files refused, by reason", &["reason"], &self.load_failures);
        counters(&mut out, "agent_host_plugin_panics_total", "Calls that panicked inside a plugin", &["plugin"], &self.panics);
        counters(
            &mut out,
            "agent_host_generations_leaked_total",
            "Retired plugin versions that still had calls, threads or a running shutdown at the drain deadline",
            &["plugin"],
            &self.leaked,
        );
        header(&mut out, "agent_host_calls_rejected_total", "counter", "Calls refused at an agent's concurrency limit");
        let _ = writeln!(out, "agent_host_calls_rejected_total {}", self.rejected.load(Ordering::Relaxed));
        let gauge = |out: &mut String, name: &str, help: &str, v: usize| {
            header(out, name, "gauge", help);
            let _ = writeln!(out, "{name} {v}");
        };
        gauge(&mut out, "agent_host_plugins_serving", "Plugin versions serving", gauges.plugins_serving);
        gauge(
            &mut out,
            "agent_host_mapped_libraries",
            "Plugin libraries mapped (never unmapped; a restart releases them)",
            gauges.mapped_libraries,
        );
        gauge(&mut out, "agent_host_draining_versions", "Replaced plugin versions with calls still in flight", gauges.draining_versions);
        gauge(
            &mut out,
            "agent_host_generations_leaked",
            "Retired plugin versions past the drain deadline that still hold calls, threads or their shutdown",
            gauges.leaked_generations,
        );
        if !gauges.watch_mode.is_empty() {
            header(&mut out, "agent_host_watch_mode", "gauge", "How the plugin directory is followed (1 for the mode in use)");
            let _ = writeln!(out, "agent_host_watch_mode{{mode=\"{}\"}} 1", gauges.watch_mode);
        }
        header(&mut out, "agent_host_calls_in_flight", "gauge", "Calls running in an agent");
        for (plugin, agent, n) in &gauges.in_flight {
            let _ = writeln!(out, "agent_host_calls_in_flight{} {n}", labels(&["plugin", "agent"], &[plugin.clone(), agent.clone()]));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flytekit_families_render_with_their_labels() {
        let m = Metrics::default();
        m.request("bigquery", "create", Duration::from_millis(250), None);
        m.request("bigquery", "create", Duration::from_millis(750), None);
        m.request("bigquery", "get", Duration::from_millis(10), Some("500"));
        m.input_bytes("bigquery", 42);
        let text = m.render(&Gauges::default());
        assert!(text.contains("# TYPE flyte_connector_request_latency_seconds summary"), "{text}");
        assert!(text.contains("flyte_connector_requests_success_total{task_type=\"bigquery\",operation=\"create\"} 2"), "{text}");
        assert!(
            text.contains("flyte_connector_requests_failure_total{task_type=\"bigquery\",operation=\"get\",error_code=\"500\"} 1"),
            "{text}"
        );
        assert!(text.contains("flyte_connector_request_latency_seconds_count{task_type=\"bigquery\",operation=\"create\"} 2"), "{text}");
        assert!(text.contains("flyte_connector_request_latency_seconds_sum{task_type=\"bigquery\",operation=\"create\"} 1"), "{text}");
        assert!(text.contains("flyte_connector_input_literal_bytes_sum{task_type=\"bigquery\"} 42"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.load_failed("a\"b");
        assert!(m.render(&Gauges::default()).contains("reason=\"a\\\"b\""));
    }
}
