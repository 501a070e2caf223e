//! Prometheus metrics (OpenMetrics text), served at `GET /metrics` on the
//! control socket and, when `[control] metrics_listen` is set, on loopback
//! TCP. One process-wide set: the data path bumps counters where things
//! happen; gauges that mirror other state are filled in at scrape time.

use std::sync::LazyLock;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    pub agent: String,
    pub protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub kind: String,
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

pub struct Metrics {
    registry: Registry,
    pub connections: Family<ConnLabels, Counter>,
    pub active_connections: Gauge,
    pub decisions: Family<DecisionLabels, Counter>,
    pub added_latency: Family<KindLabels, Histogram>,
    pub policy_evaluation: Histogram,
    pub policy_info: Family<VersionLabels, Gauge>,
    pub policy_reload_failures: Counter,
    pub audit_queue_depth: Gauge,
    pub audit_records_written: Counter,
    pub audit_write_errors: Counter,
    pub approvals_pending: Gauge,
    pub approvals_requested: Counter,
    pub approvals: Family<OutcomeLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    // 10 µs … ~5 min: policy time up to approval holds.
    Histogram::new(exponential_buckets(0.000_01, 4.0, 13))
}

pub fn get() -> &'static Metrics {
    static M: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &M
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("agentguard");
        let m = Self {
            connections: Family::default(),
            active_connections: Gauge::default(),
            decisions: Family::default(),
            added_latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            policy_evaluation: Histogram::new(exponential_buckets(0.000_005, 2.0, 16)),
            policy_info: Family::default(),
            policy_reload_failures: Counter::default(),
            audit_queue_depth: Gauge::default(),
            audit_records_written: Counter::default(),
            audit_write_errors: Counter::default(),
            approvals_pending: Gauge::default(),
            approvals_requested: Counter::default(),
            approvals: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Guarded connections accepted, by agent and target protocol",
            m.connections.clone(),
        );
        registry.register(
            "active_connections",
            "Guarded connections open now",
            m.active_connections.clone(),
        );
        registry.register(
            "decisions",
            "Decisions recorded, by request kind and final action",
            m.decisions.clone(),
        );
        registry.register(
            "added_latency_seconds",
            "Time the guard added before a request went on (policy, holds), by request kind",
            m.added_latency.clone(),
        );
        registry.register(
            "policy_evaluation_seconds",
            "Time one policy evaluation took",
            m.policy_evaluation.clone(),
        );
        registry.register(
            "policy_info",
            "The live policy bundle (value 1; the version is a label)",
            m.policy_info.clone(),
        );
        registry.register(
            "policy_reload_failures",
            "Policy reloads that failed (the last good bundle stayed live)",
            m.policy_reload_failures.clone(),
        );
        registry.register(
            "audit_queue_depth",
            "Records waiting for the audit writer",
            m.audit_queue_depth.clone(),
        );
        registry.register(
            "audit_records_written",
            "Audit records committed to the database",
            m.audit_records_written.clone(),
        );
        registry.register(
            "audit_write_errors",
            "Audit batches that failed to commit",
            m.audit_write_errors.clone(),
        );
        registry.register(
            "approvals_pending",
            "Requests held for a person's approval now",
            m.approvals_pending.clone(),
        );
        registry.register(
            "approvals_requested",
            "Requests that were held for approval",
            m.approvals_requested.clone(),
        );
        registry.register(
            "approvals_answered",
            "Held requests by outcome: approved, denied, timed_out, granted (a standing --for approval)",
            m.approvals.clone(),
        );
        Self { registry, ..m }
    }

    /// One decision as recorded: counted, and its added latency observed.
    pub fn decision(&self, kind: &str, action: &str, latency_us: u64) {
        self.decisions
            .get_or_create(&DecisionLabels {
                kind: kind.to_owned(),
                action: action.to_owned(),
            })
            .inc();
        self.added_latency
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .observe(latency_us as f64 / 1e6);
    }

    pub fn approval(&self, outcome: &str) {
        self.approvals
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn connection(&self, agent: Option<&str>, protocol: &str) {
        self.connections
            .get_or_create(&ConnLabels {
                agent: agent.unwrap_or("-").to_owned(),
                protocol: protocol.to_owned(),
            })
            .inc();
    }

    pub fn set_policy_version(&self, version: Option<&str>) {
        self.policy_info.clear();
        if let Some(v) = version {
            self.policy_info
                .get_or_create(&VersionLabels {
                    version: v.to_owned(),
                })
                .set(1);
        }
    }

    /// Counters that mirror a running total kept elsewhere.
    pub fn catch_up(counter: &Counter, total: u64) {
        let seen = counter.get();
        if total > seen {
            counter.inc_by(total - seen);
        }
    }

    /// The OpenMetrics text of everything.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Content-Type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
