//! Counters the proxy keeps, and their Prometheus text form for `/metrics`. Plain atomics:
//! the request path only increments.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Upper bounds of the upstream latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    /// Responses by status code (100 to 599).
    statuses: Vec<AtomicU64>,
    latency: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    routes: AtomicU64,
    /// When the table was last loaded, in milliseconds since `started`.
    loaded_ms: AtomicU64,
    loads: AtomicU64,
    load_failures: AtomicU64,
    lookups: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            started: Instant::now(),
            statuses: (100..600).map(|_| AtomicU64::new(0)).collect(),
            latency: Default::default(),
            latency_count: AtomicU64::new(0),
            latency_sum_us: AtomicU64::new(0),
            routes: AtomicU64::new(0),
            loaded_ms: AtomicU64::new(0),
            loads: AtomicU64::new(0),
            load_failures: AtomicU64::new(0),
            lookups: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Milliseconds since the proxy started: the clock of endpoint ejection.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn response(&self, status: u16) {
        if let Some(counter) = status
            .checked_sub(100)
            .and_then(|i| self.statuses.get(usize::from(i)))
        {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn upstream_latency(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&le| seconds <= le) {
            self.latency[i].fetch_add(1, Ordering::Relaxed);
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn loaded(&self, routes: usize) {
        self.routes.store(routes as u64, Ordering::Relaxed);
        self.loaded_ms.store(self.now_ms(), Ordering::Relaxed);
        self.loads.fetch_add(1, Ordering::Relaxed);
    }

    pub fn load_failed(&self) {
        self.load_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn lookup(&self) {
        self.lookups.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        describe(
            &mut out,
            "requests_total",
            "counter",
            "Responses sent, by status code.",
        );
        for (i, count) in self.statuses.iter().enumerate() {
            let count = count.load(Ordering::Relaxed);
            if count > 0 {
                let _ = writeln!(
                    out,
                    "meshploy_proxy_requests_total{{status=\"{}\"}} {count}",
                    i + 100
                );
            }
        }
        describe(
            &mut out,
            "upstream_latency_seconds",
            "histogram",
            "Time from sending a request upstream to its response headers.",
        );
        let mut cumulative = 0;
        for (le, count) in BUCKETS.iter().zip(&self.latency) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "meshploy_proxy_upstream_latency_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "meshploy_proxy_upstream_latency_seconds_bucket{{le=\"+Inf\"}} {count}\n\
             meshploy_proxy_upstream_latency_seconds_sum {}\n\
             meshploy_proxy_upstream_latency_seconds_count {count}",
            self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let age = (self.now_ms() - self.loaded_ms.load(Ordering::Relaxed)) as f64 / 1e3;
        for (name, kind, help, value) in [
            (
                "routes",
                "gauge",
                "Routes in the table.",
                self.routes.load(Ordering::Relaxed) as f64,
            ),
            (
                "route_table_age_seconds",
                "gauge",
                "Seconds since the route table was last loaded.",
                age,
            ),
            (
                "route_table_loads_total",
                "counter",
                "Route table loads from PostgreSQL.",
                self.loads.load(Ordering::Relaxed) as f64,
            ),
            (
                "route_table_load_failures_total",
                "counter",
                "Failed route table loads (PostgreSQL unreachable or failing).",
                self.load_failures.load(Ordering::Relaxed) as f64,
            ),
            (
                "db_lookups_total",
                "counter",
                "Database lookups of hosts not in the table.",
                self.lookups.load(Ordering::Relaxed) as f64,
            ),
        ] {
            describe(&mut out, name, kind, help);
            let _ = writeln!(out, "meshploy_proxy_{name} {value}");
        }
        out
    }
}

/// The `# HELP` and `# TYPE` lines of one metric.
fn describe(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP meshploy_proxy_{name} {help}");
    let _ = writeln!(out, "# TYPE meshploy_proxy_{name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_counts_statuses_and_buckets_cumulatively() {
        let m = Metrics::default();
        m.response(200);
        m.response(200);
        m.response(502);
        m.response(42);
        m.upstream_latency(Duration::from_millis(3));
        m.upstream_latency(Duration::from_millis(30));
        m.lookup();
        m.loaded(7);
        let text = m.render();
        for line in [
            "meshploy_proxy_requests_total{status=\"200\"} 2",
            "meshploy_proxy_requests_total{status=\"502\"} 1",
            "meshploy_proxy_upstream_latency_seconds_bucket{le=\"0.0025\"} 0",
            "meshploy_proxy_upstream_latency_seconds_bucket{le=\"0.005\"} 1",
            "meshploy_proxy_upstream_latency_seconds_bucket{le=\"0.05\"} 2",
            "meshploy_proxy_upstream_latency_seconds_bucket{le=\"+Inf\"} 2",
            "meshploy_proxy_upstream_latency_seconds_count 2",
            "meshploy_proxy_upstream_latency_seconds_sum 0.033",
            "meshploy_proxy_routes 7",
            "meshploy_proxy_db_lookups_total 1",
            "meshploy_proxy_route_table_loads_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(!text.contains("status=\"42\""));
    }
}
