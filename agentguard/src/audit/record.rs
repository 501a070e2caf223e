//! What is stored: one [`DecisionRecord`] per decision, one [`SessionRecord`]
//! per guarded connection, and the connection's [`Frame`]s in order. All of
//! it is JSON in redb values: readable with any tool, and a new field never
//! breaks old files (`#[serde(default)]`).
//!
//! Nothing here may hold a value the agent did not see masked: rows are
//! recorded after masking, SQL text is masked with the same selection before
//! it is stored, and authentication messages are never recorded at all.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    decide::{Action, Decision, Target},
    identity::Identity,
};

/// Key of a decision: (time in ns since the epoch, sequence). The sequence
/// carries the writing process's pid in its high half, so two processes
/// writing the same file never collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DecisionId {
    pub time_ns: u64,
    pub seq: u64,
}

impl std::fmt::Display for DecisionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}-{:016x}", self.time_ns, self.seq)
    }
}

impl std::str::FromStr for DecisionId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (t, q) = s.split_once('-').ok_or("want TIME-SEQ (hex)")?;
        let parse = |x: &str| u64::from_str_radix(x, 16).map_err(|e| e.to_string());
        Ok(Self {
            time_ns: parse(t)?,
            seq: parse(q)?,
        })
    }
}

/// One decision: who asked for what, and what the guard answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// Set by the recorder.
    #[serde(default)]
    pub id: Option<DecisionId>,
    pub time_ns: u64,
    /// The connection the decision belongs to (None: refused before one
    /// existed, e.g. no origin record).
    pub session_id: Option<u64>,
    /// None when the connection did not come through the hook: nothing is
    /// known about who made it.
    pub identity: Option<Identity>,
    /// The client's address as the proxy saw it (the only clue left when
    /// there is no identity).
    #[serde(default)]
    pub peer: Option<String>,
    pub target: Option<Target>,
    pub request: RequestSummary,
    pub action: Action,
    pub reason: String,
    pub policy_version: String,
    /// What the policy asked to mask (detector names, rules).
    #[serde(default)]
    pub mask_rules: Vec<String>,
    /// What was masked in the response: entity (or rule) → values masked.
    /// Filled in when the response is complete.
    #[serde(default)]
    pub masks: BTreeMap<String, u64>,
    /// Rows (or items) returned to the agent for this request.
    #[serde(default)]
    pub rows: Option<u64>,
    /// Time the guard added to decide, in µs.
    pub latency_us: u64,
    /// Who answered an `approve` decision (`agentguard approve|deny`).
    #[serde(default)]
    pub approver: Option<String>,
}

impl DecisionRecord {
    /// A record for `decision`, taken `latency` after the request arrived.
    pub fn new(
        session_id: Option<u64>,
        identity: Option<&Identity>,
        target: Option<&Target>,
        request: RequestSummary,
        decision: &Decision,
        latency: std::time::Duration,
    ) -> Self {
        Self {
            id: None,
            time_ns: 0,
            session_id,
            identity: identity.cloned(),
            peer: None,
            target: target.cloned(),
            request,
            action: decision.action,
            reason: decision.reason.clone(),
            policy_version: decision.policy_version.clone(),
            mask_rules: decision.mask.clone(),
            masks: BTreeMap::new(),
            rows: None,
            latency_us: u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            approver: decision.approver.clone(),
        }
    }

    pub fn agent(&self) -> Option<&str> {
        self.identity.as_ref()?.agent.as_deref()
    }

    /// Names the target index holds this record under: the configured name
    /// and `ip:port` (so `--target` takes either).
    pub fn target_keys(&self) -> Vec<String> {
        let Some(t) = &self.target else {
            return Vec::new();
        };
        let mut keys = vec![target_addr(t)];
        if let Some(name) = &t.name {
            keys.push(name.clone());
        }
        keys
    }
}

pub fn target_addr(t: &Target) -> String {
    if t.ip.contains(':') {
        format!("[{}]:{}", t.ip, t.port)
    } else {
        format!("{}:{}", t.ip, t.port)
    }
}

pub fn action_str(a: Action) -> &'static str {
    match a {
        Action::Allow => "allow",
        Action::Deny => "deny",
        Action::Approve => "approve",
    }
}

/// What was asked, in a form fit for a log line; one variant per request
/// kind. The HTTP guard records `Http` (and `K8s` / `Llm` for those targets).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RequestSummary {
    /// L4: a connection, before any byte.
    Connect,
    Sql {
        /// Masked before storage (see [`crate::audit::Recorder`]).
        sql: String,
        #[serde(default)]
        protocol: String,
        #[serde(default)]
        operations: Vec<String>,
        #[serde(default)]
        tables: Vec<String>,
        #[serde(default)]
        database: Option<String>,
        #[serde(default)]
        db_user: Option<String>,
    },
    Http {
        method: String,
        host: Option<String>,
        path: String,
        #[serde(default)]
        query: Option<String>,
    },
    K8s {
        verb: String,
        #[serde(default)]
        group: String,
        resource: String,
        #[serde(default)]
        namespace: Option<String>,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        subresource: Option<String>,
    },
    Redis {
        command: String,
    },
    Llm {
        provider: String,
        model: Option<String>,
        path: String,
    },
    /// One WebSocket message (only denied ones are recorded; the
    /// upgrade is an `Http` record whose result counts what was masked).
    #[serde(rename = "websocket")]
    WebSocket {
        host: Option<String>,
        path: String,
        /// `agent_to_server` or `server_to_agent`.
        direction: String,
        /// `text` or `binary`.
        message: String,
        size: u64,
    },
    /// Anything else: one line.
    Other {
        summary: String,
    },
}

impl RequestSummary {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Sql { .. } => "sql",
            Self::Http { .. } => "http",
            Self::K8s { .. } => "k8s",
            Self::Redis { .. } => "redis",
            Self::Llm { .. } => "llm",
            Self::WebSocket { .. } => "websocket",
            Self::Other { .. } => "other",
        }
    }

    /// One line for tables and replay.
    pub fn line(&self) -> String {
        match self {
            Self::Connect => "connect".into(),
            Self::Sql { sql, .. } => sql.split_whitespace().collect::<Vec<_>>().join(" "),
            Self::Http {
                method,
                host,
                path,
                query,
            } => format!(
                "{method} {}{path}{}",
                host.as_deref().unwrap_or(""),
                query
                    .as_deref()
                    .map(|q| format!("?{q}"))
                    .unwrap_or_default()
            ),
            Self::K8s {
                verb,
                group,
                resource,
                namespace,
                name,
                subresource,
            } => {
                let mut s = format!("{verb} ");
                if !group.is_empty() {
                    s.push_str(&format!("{group}/"));
                }
                s.push_str(resource);
                if let Some(sub) = subresource {
                    s.push_str(&format!("/{sub}"));
                }
                if let Some(n) = name {
                    s.push_str(&format!(" {n}"));
                }
                if let Some(ns) = namespace {
                    s.push_str(&format!(" -n {ns}"));
                }
                s
            }
            Self::Redis { command } => command.clone(),
            Self::Llm {
                provider,
                model,
                path,
            } => format!("{provider} {} {path}", model.as_deref().unwrap_or("-")),
            Self::WebSocket {
                host,
                path,
                direction,
                message,
                size,
            } => format!(
                "websocket {}{path} {direction} {message} {size} bytes",
                host.as_deref().unwrap_or("")
            ),
            Self::Other { summary } => summary.clone(),
        }
    }
}

/// One guarded connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: u64,
    pub start_ns: u64,
    #[serde(default)]
    pub end_ns: Option<u64>,
    /// Time of the latest record of the session (what retention looks at).
    pub last_ns: u64,
    pub identity: Option<Identity>,
    pub target: Option<Target>,
    /// Protocol-level facts: database, db_user, application_name, …
    #[serde(default)]
    pub details: BTreeMap<String, String>,
    #[serde(default)]
    pub counts: SessionCounts,
    /// Why it ended, when not cleanly.
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionCounts {
    /// Requests decided inside the session (statements, HTTP requests), the
    /// connect decision not included.
    pub requests: u64,
    pub allowed: u64,
    pub denied: u64,
    /// Rows (or items) returned to the agent.
    pub rows: u64,
    /// Values masked in what was returned.
    pub masked: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// A frame of a session recording, as the agent saw it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FrameRecord {
    pub time_ns: u64,
    #[serde(flatten)]
    pub frame: Frame,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Frame {
    /// A request and what was decided (a copy of the decision's summary, so
    /// a replay needs nothing else).
    Request {
        decision: DecisionId,
        request: RequestSummary,
        action: Action,
        reason: String,
    },
    /// The columns of the result that follows.
    Columns { names: Vec<String> },
    /// Result rows as forwarded (masked); NULL is `None`. Values of binary
    /// format that are not text are shown as `<binary N bytes>`.
    Rows { rows: Vec<Vec<Option<String>>> },
    /// One result is complete (`SELECT 2`, `COPY 3`, `200 OK`).
    Complete {
        tag: String,
        rows: u64,
        /// Rows beyond the recording cap (counted, not stored).
        #[serde(default)]
        omitted: u64,
    },
    /// An error the server sent (message only; its detail may quote data).
    Error { code: String, message: String },
    /// Raw text the agent received (COPY TO STDOUT data, a body), masked.
    Text { text: String },
}
