//! Just-in-time approvals. A request whose decision is `approve` is held
//! here until a person answers through the control socket (`agentguard
//! approve|deny ID`) or `approval_timeout_secs` passes (then: deny).
//!
//! `approve --for 15m` also leaves a grant: the same agent and uid asking the
//! same target for the same kind of request (a fingerprint: the statement
//! with its literals replaced, the method and path template, the k8s verb and
//! object) passes without a new hold until the grant ends.
//!
//! Pending holds and grants are kept in `<state_dir>/approvals.json`, so a
//! restarted daemon knows what was waiting: the held connections are gone
//! (their clients saw the connection close), and each is audited as denied.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tokio::{io::AsyncWriteExt as _, sync::oneshot};
use tracing::{info, warn};

use crate::{
    audit::{DecisionRecord, Recorder, RequestSummary},
    decide::{Action, Decision, Input, Request, Target},
    identity::Identity,
};

const FILE: &str = "approvals.json";
/// Longest a notification command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Who answered, from the control socket's peer credentials.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Approver {
    pub uid: u32,
    pub user: Option<String>,
}

impl std::fmt::Display for Approver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.user {
            Some(u) => write!(f, "{u} (uid {})", self.uid),
            None => write!(f, "uid {}", self.uid),
        }
    }
}

/// A held request as `agentguard approvals` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingInfo {
    pub id: String,
    /// Unix seconds.
    pub since: u64,
    /// Unix seconds: when the hold turns into a deny.
    pub expires: u64,
    pub agent: Option<String>,
    pub identity: Identity,
    pub target: Target,
    /// sql, http, k8s, llm or connect.
    pub kind: String,
    /// One line: the statement (secrets redacted), method and URL, …
    pub request: String,
    /// The policy's reason for asking.
    pub reason: String,
    pub fingerprint: String,
}

/// A standing `--for` approval.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Grant {
    pub fingerprint: String,
    /// Unix seconds.
    pub until: u64,
    pub approver: Approver,
    pub reason: Option<String>,
    /// The request that was approved, for `approvals` to show.
    pub request: String,
}

#[derive(Debug, Clone)]
pub enum Verdict {
    Approve {
        by: Approver,
        reason: Option<String>,
    },
    Deny {
        by: Approver,
        reason: Option<String>,
    },
    /// The daemon is stopping: nobody can answer any more.
    Shutdown,
}

#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("no pending approval {0} (answered already, timed out, or its client went away)")]
    NotFound(String),
}

#[derive(Default, Serialize, Deserialize)]
struct Persisted {
    #[serde(default)]
    pending: Vec<PendingInfo>,
    #[serde(default)]
    grants: Vec<Grant>,
}

struct Held {
    info: PendingInfo,
    answer: oneshot::Sender<Verdict>,
}

#[derive(Default)]
struct Inner {
    pending: BTreeMap<String, Held>,
    grants: Vec<Grant>,
}

pub struct Approvals {
    inner: Mutex<Inner>,
    file: Option<PathBuf>,
    timeout: Duration,
    command: Vec<String>,
    masker: Option<Arc<agentguard_mask::Engine>>,
    next: AtomicU64,
}

/// Removes a held request when its hold ends in any way (answer, timeout, or
/// the session task being dropped because the client left).
struct HoldGuard<'a> {
    approvals: &'a Approvals,
    id: String,
}

impl Drop for HoldGuard<'_> {
    fn drop(&mut self) {
        self.approvals.remove(&self.id);
    }
}

impl Approvals {
    /// For `exec` without a daemon: nothing persisted (the held connections
    /// end with the exec). Ids are seeded from the pid and the clock, so the
    /// holds of two execs running side by side have different ids.
    pub fn in_memory(
        timeout: Duration,
        command: Vec<String>,
        masker: Option<Arc<agentguard_mask::Engine>>,
    ) -> Self {
        let seed = unix_now().wrapping_mul(1000) ^ u64::from(std::process::id()).wrapping_mul(7919);
        Self {
            inner: Mutex::default(),
            file: None,
            timeout,
            command,
            masker,
            next: AtomicU64::new(seed & 0xff_ffff),
        }
    }

    /// Loads `<state_dir>/approvals.json`. Holds left by a previous run are
    /// returned so the caller can audit them as denied; grants still in
    /// force are kept.
    pub fn open(
        state_dir: &std::path::Path,
        timeout: Duration,
        command: Vec<String>,
        masker: Option<Arc<agentguard_mask::Engine>>,
    ) -> (Self, Vec<PendingInfo>) {
        let file = state_dir.join(FILE);
        let persisted: Persisted = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                warn!(file = %file.display(), "approvals file unreadable ({e}); starting empty");
                Persisted::default()
            }),
            Err(_) => Persisted::default(),
        };
        let now = unix_now();
        let this = Self {
            inner: Mutex::new(Inner {
                pending: BTreeMap::new(),
                grants: persisted
                    .grants
                    .into_iter()
                    .filter(|g| g.until > now)
                    .collect(),
            }),
            file: Some(file),
            timeout,
            command,
            masker,
            // Ids from one run never repeat those of the last.
            next: AtomicU64::new(now.wrapping_mul(1000) & 0xff_ffff),
        };
        this.save();
        (this, persisted.pending)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn pending(&self) -> Vec<PendingInfo> {
        self.lock()
            .pending
            .values()
            .map(|h| h.info.clone())
            .collect()
    }

    pub fn grants(&self) -> Vec<Grant> {
        let now = unix_now();
        self.lock()
            .grants
            .iter()
            .filter(|g| g.until > now)
            .cloned()
            .collect()
    }

    /// Holds the request behind `decision` (action approve) until a person
    /// answers or the timeout passes; returns the decision to apply.
    pub async fn hold(&self, input: &Input, decision: Decision) -> Decision {
        let fingerprint = fingerprint(input);
        let now = unix_now();
        if let Some(grant) = self
            .lock()
            .grants
            .iter()
            .find(|g| g.fingerprint == fingerprint && g.until > now)
            .cloned()
        {
            info!(approver = %grant.approver, "allowed by a standing approval");
            crate::metrics::get().approval("granted");
            return Decision {
                action: Action::Allow,
                reason: format!(
                    "approved by {} until {} ({})",
                    grant.approver,
                    crate::policy::format_time(grant.until),
                    decision.reason
                ),
                approver: Some(grant.approver.to_string()),
                ..decision
            };
        }
        let id = format!(
            "{:06x}",
            self.next.fetch_add(1, Ordering::Relaxed) & 0xff_ffff
        );
        let (kind, request) = self.summary(input);
        let info = PendingInfo {
            id: id.clone(),
            since: now,
            expires: now + self.timeout.as_secs(),
            agent: input.identity.agent.clone(),
            identity: input.identity.clone(),
            target: input.target.clone(),
            kind,
            request,
            reason: decision.reason.clone(),
            fingerprint: fingerprint.clone(),
        };
        let (tx, rx) = oneshot::channel();
        self.lock().pending.insert(
            id.clone(),
            Held {
                info: info.clone(),
                answer: tx,
            },
        );
        let _guard = HoldGuard {
            approvals: self,
            id: id.clone(),
        };
        self.save();
        warn!(approval = %id, request = %info.request, reason = %decision.reason, timeout = ?self.timeout,
            "held for approval: `agentguard approve {id}` or `agentguard deny {id}`");
        crate::metrics::get().approvals_requested.inc();
        self.notify(&info);
        let verdict = tokio::time::timeout(self.timeout, rx).await;
        match verdict {
            Ok(Ok(Verdict::Approve { by, reason })) => {
                info!(approval = %id, approver = %by, "approved");
                crate::metrics::get().approval("approved");
                Decision {
                    action: Action::Allow,
                    reason: match reason {
                        Some(r) => format!("approved by {by}: {r} ({})", decision.reason),
                        None => format!("approved by {by} ({})", decision.reason),
                    },
                    approver: Some(by.to_string()),
                    ..decision
                }
            }
            Ok(Ok(Verdict::Deny { by, reason })) => {
                warn!(approval = %id, approver = %by, "denied by approver");
                crate::metrics::get().approval("denied");
                Decision {
                    action: Action::Deny,
                    reason: match reason {
                        Some(r) => format!("denied by {by}: {r} ({})", decision.reason),
                        None => format!("denied by {by} ({})", decision.reason),
                    },
                    approver: Some(by.to_string()),
                    mask: Vec::new(),
                    ..decision
                }
            }
            Ok(Ok(Verdict::Shutdown)) => {
                warn!(approval = %id, "denied: the daemon is stopping");
                crate::metrics::get().approval("shutdown");
                Decision {
                    action: Action::Deny,
                    reason: format!(
                        "approval required ({}); the agentguard daemon stopped before anyone answered",
                        decision.reason
                    ),
                    mask: Vec::new(),
                    ..decision
                }
            }
            // Timed out (or the sender went away, which only a restart of
            // this map could do): deny.
            Ok(Err(_)) | Err(_) => {
                let reason = format!(
                    "approval required ({}), none given within {}s",
                    decision.reason,
                    self.timeout.as_secs()
                );
                warn!(approval = %id, %reason, "denied");
                crate::metrics::get().approval("timed_out");
                Decision {
                    action: Action::Deny,
                    reason,
                    mask: Vec::new(),
                    ..decision
                }
            }
        }
    }

    /// Answers a held request. `grant_for`: also let the same kind of
    /// request through for that long.
    pub fn answer(
        &self,
        id: &str,
        verdict: Verdict,
        grant_for: Option<Duration>,
    ) -> Result<PendingInfo, AnswerError> {
        let held = self
            .lock()
            .pending
            .remove(id)
            .ok_or_else(|| AnswerError::NotFound(id.to_owned()))?;
        let info = held.info.clone();
        let grant = match (grant_for, &verdict) {
            (Some(d), Verdict::Approve { by, reason }) => Some(Grant {
                fingerprint: info.fingerprint.clone(),
                until: unix_now() + d.as_secs(),
                approver: by.clone(),
                reason: reason.clone(),
                request: info.request.clone(),
            }),
            _ => None,
        };
        // The session may be gone (its client closed): then nobody waits,
        // and no grant is left behind for it.
        let delivered = held.answer.send(verdict).is_ok();
        if delivered && let Some(grant) = grant {
            let mut inner = self.lock();
            inner.grants.retain(|g| g.fingerprint != grant.fingerprint);
            inner.grants.push(grant);
        }
        self.save();
        if delivered {
            Ok(info)
        } else {
            Err(AnswerError::NotFound(id.to_owned()))
        }
    }

    /// Denies every held request (the daemon is stopping), so each client
    /// gets a clean refusal and each hold its audit record.
    pub fn deny_all(&self) {
        let held: Vec<Held> = std::mem::take(&mut self.lock().pending)
            .into_values()
            .collect();
        self.save();
        for h in held {
            let _ = h.answer.send(Verdict::Shutdown);
        }
    }

    fn remove(&self, id: &str) {
        let removed = self.lock().pending.remove(id).is_some();
        if removed {
            self.save();
        }
    }

    fn save(&self) {
        let Some(file) = &self.file else { return };
        let persisted = {
            let inner = self.lock();
            Persisted {
                pending: inner.pending.values().map(|h| h.info.clone()).collect(),
                grants: inner.grants.clone(),
            }
        };
        let Ok(json) = serde_json::to_vec_pretty(&persisted) else {
            return;
        };
        let tmp = file.with_extension("tmp");
        if let Err(e) = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, file)) {
            warn!(file = %file.display(), "cannot save pending approvals: {e}");
        }
    }

    /// What approvers see: the request in one line, secrets redacted and
    /// personal data masked (the file under state_dir must hold no more
    /// than the audit log does).
    fn summary(&self, input: &Input) -> (String, String) {
        let (kind, line) = match &input.request {
            Request::Connect => ("connect", "connect".to_owned()),
            Request::TlsConnect(t) => (
                "connect",
                format!("tls connect {}", t.sni.as_deref().unwrap_or("(no sni)")),
            ),
            Request::Sql(s) => ("sql", crate::audit::redact_sql_passwords(&s.sql)),
            Request::Http(h) => ("http", http_line(h)),
            Request::Redis(r) => ("redis", r.summary().line()),
            Request::Mysql(m) => ("mysql", crate::audit::redact_sql_passwords(&m.sql)),
            Request::Llm(l) => ("llm", http_line(&l.http)),
            Request::WebSocket(w) => (
                "websocket",
                format!(
                    "websocket {}{} {} message, {} bytes",
                    w.upgrade.host, w.upgrade.path, w.message, w.size
                ),
            ),
            Request::K8s(k) => (
                "k8s",
                format!(
                    "{} {}{}{}{}",
                    k.verb,
                    k.resource.as_deref().unwrap_or(&k.path),
                    k.subresource
                        .as_deref()
                        .map(|s| format!("/{s}"))
                        .unwrap_or_default(),
                    k.namespace
                        .as_deref()
                        .map(|n| format!(" -n {n}"))
                        .unwrap_or_default(),
                    k.name
                        .as_deref()
                        .map(|n| format!(" {n}"))
                        .unwrap_or_default(),
                ),
            ),
        };
        let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
        let line = match &self.masker {
            Some(engine) => match engine.selection::<&str>(input.target.name.as_deref(), &[]) {
                Ok(sel) => engine
                    .mask_value(&line, &agentguard_mask::FieldContext::text(), &sel)
                    .value
                    .into_owned(),
                Err(_) => line,
            },
            None => line,
        };
        (kind.to_owned(), line)
    }

    /// Runs `approval_command` with the approval as JSON on stdin; never
    /// holds anything up, and a failure is only logged.
    fn notify(&self, info: &PendingInfo) {
        let Some((program, args)) = self.command.split_first() else {
            return;
        };
        let Ok(json) = serde_json::to_vec(info) else {
            return;
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let id = info.id.clone();
        tokio::spawn(async move {
            let run = async {
                let mut child = cmd.spawn()?;
                if let Some(mut stdin) = child.stdin.take() {
                    stdin.write_all(&json).await?;
                }
                child.wait_with_output().await
            };
            match tokio::time::timeout(COMMAND_TIMEOUT, run).await {
                Ok(Ok(out)) if out.status.success() => {}
                Ok(Ok(out)) => warn!(approval = %id, status = %out.status,
                    stderr = %String::from_utf8_lossy(&out.stderr).trim(), "approval_command failed"),
                Ok(Err(e)) => warn!(approval = %id, "approval_command could not run: {e}"),
                Err(_) => {
                    warn!(approval = %id, "approval_command timed out after {COMMAND_TIMEOUT:?}; killed")
                }
            }
        });
    }
}

/// Holds a previous run left behind: their connections are gone; each is
/// audited as a deny so the log says what happened to it.
pub async fn audit_abandoned(recorder: &Recorder, abandoned: Vec<PendingInfo>) {
    for p in abandoned {
        warn!(approval = %p.id, request = %p.request,
            "a request held for approval was dropped by a daemon restart");
        let decision = Decision::deny(format!(
            "held for approval ({}) when the daemon stopped; the connection was closed",
            p.reason
        ));
        let record = DecisionRecord::new(
            None,
            Some(&p.identity),
            Some(&p.target),
            RequestSummary::Other {
                summary: format!("{}: {}", p.kind, p.request),
            },
            &decision,
            Duration::ZERO,
        );
        let _ = recorder.decision(record).await;
    }
}

fn http_line(h: &crate::http::HttpRequest) -> String {
    format!(
        "{} {}://{}{}",
        h.endpoint.method, h.endpoint.scheme, h.endpoint.host, h.endpoint.path
    )
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a `--for` grant covers: who (agent, uid), where (target), and what
/// kind of request — literals and ids replaced so the same statement with
/// other values, or the same endpoint for another id, matches.
pub fn fingerprint(input: &Input) -> String {
    let who = format!(
        "{}|{}",
        input.identity.agent.as_deref().unwrap_or("-"),
        input.identity.uid
    );
    let target = input
        .target
        .name
        .clone()
        .unwrap_or_else(|| format!("{}:{}", input.target.ip, input.target.port));
    let what = match &input.request {
        Request::Connect => "connect".to_owned(),
        Request::TlsConnect(t) => format!("tls {}", t.sni.as_deref().unwrap_or("")),
        Request::Sql(s) => format!("sql {}", normalize_sql(&s.sql)),
        Request::Mysql(m) => format!("mysql {} {}", m.command, normalize_sql(&m.sql)),
        // A grant covers a command (and subcommand), whatever its keys.
        Request::Redis(r) => format!(
            "redis {} {}",
            r.command,
            r.subcommand.as_deref().unwrap_or("")
        ),
        Request::Http(h) => format!(
            "http {} {}",
            h.endpoint.method,
            path_template(&h.endpoint.path)
        ),
        Request::Llm(l) => format!(
            "llm {} {}",
            l.http.endpoint.method,
            path_template(&l.http.endpoint.path)
        ),
        // A grant covers the messages of one endpoint, not one message.
        Request::WebSocket(w) => format!(
            "websocket {}{}",
            w.upgrade.host,
            path_template(&w.upgrade.path)
        ),
        Request::K8s(k) => format!(
            "k8s {} {}/{} {} {} {}",
            k.verb,
            k.group,
            k.resource.as_deref().unwrap_or(&k.path),
            k.subresource.as_deref().unwrap_or(""),
            k.namespace.as_deref().unwrap_or(""),
            k.name.as_deref().unwrap_or(""),
        ),
    };
    format!("{who}|{target}|{what}")
}

/// The statement with literals as `?`, keywords upper-cased, comments and
/// extra whitespace gone (the shape pg_stat_statements groups by).
pub fn normalize_sql(sql: &str) -> String {
    use sqlparser::{
        dialect::PostgreSqlDialect,
        tokenizer::{Token, Tokenizer},
    };
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        // Unparseable text never matches anything but itself.
        return sql.split_whitespace().collect::<Vec<_>>().join(" ");
    };
    let mut out = String::new();
    for t in tokens {
        let piece = match t {
            Token::Whitespace(_) => continue,
            Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::DollarQuotedString(_) => "?".to_owned(),
            Token::Word(w) if w.quote_style.is_none() => w.value.to_ascii_uppercase(),
            other => other.to_string(),
        };
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&piece);
    }
    out
}

/// `/v1/orders/12345/items/9f1c…` → `/v1/orders/{}/items/{}`: segments that
/// look like ids (digits, UUIDs, long hex) become `{}`.
pub fn path_template(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            let id_like = !seg.is_empty()
                && (seg.bytes().all(|b| b.is_ascii_digit())
                    || (seg.len() >= 16
                        && seg.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')));
            if id_like { "{}" } else { seg }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_fingerprints_ignore_literals_case_and_comments() {
        let a = normalize_sql("UPDATE accounts SET balance = 10 WHERE id = 1");
        let b = normalize_sql("update  accounts set balance=99 /* x */ where id = 'abc'");
        assert_eq!(a, b);
        assert_eq!(a, "UPDATE ACCOUNTS SET BALANCE = ? WHERE ID = ?");
        assert_ne!(a, normalize_sql("DELETE FROM accounts WHERE id = 1"));
        assert_ne!(
            normalize_sql("UPDATE accounts SET balance = 1 WHERE id = 1"),
            normalize_sql("UPDATE accounts SET owner = 1 WHERE id = 1")
        );
    }

    #[test]
    fn path_templates_replace_ids_only() {
        assert_eq!(path_template("/v1/orders/123/items"), "/v1/orders/{}/items");
        assert_eq!(
            path_template("/u/3f2a9c1e-8b7d-4e6f-9a0b-1c2d3e4f5a6b"),
            "/u/{}"
        );
        assert_eq!(path_template("/v1/orders/list"), "/v1/orders/list");
    }
}
