//! `agentguard audit`, `audit export`, `sessions`, `replay`: read the
//! database read-only, beside the daemon (or an `exec` guard) that writes it.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::{
    AuditError, DecisionRecord, Frame, FrameRecord, SessionRecord,
    record::{action_str, target_addr},
    store::{self, Filter, Reader},
    time,
};
use crate::{config::Config, decide::Action};

#[derive(Args, Debug, Clone, Default)]
pub struct FilterArgs {
    /// Only this agent (its config name).
    #[arg(long)]
    pub agent: Option<String>,
    /// Only this uid.
    #[arg(long)]
    pub uid: Option<u32>,
    /// Only this target: its configured name or ip:port.
    #[arg(long)]
    pub target: Option<String>,
    /// Only this outcome.
    #[arg(long, value_parser = ["allow", "deny", "approve"])]
    pub action: Option<String>,
    /// From: a duration back from now (30s, 15m, 1h, 7d) or RFC 3339.
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Until: same forms as --since.
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
}

impl FilterArgs {
    fn filter(&self) -> Result<Filter, AuditError> {
        let now = time::now_ns();
        let point = |s: &Option<String>| {
            s.as_deref()
                .map(|s| time::parse_point(s, now).map_err(AuditError::Usage))
                .transpose()
        };
        Ok(Filter {
            agent: self.agent.clone(),
            uid: self.uid,
            target: self.target.clone(),
            action: self.action.clone(),
            since_ns: point(&self.since)?,
            until_ns: point(&self.until)?,
        })
    }
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Newest N decisions (shown oldest first).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Keep printing new decisions as they are recorded.
    #[arg(short = 'f', long)]
    pub follow: bool,
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Every matching decision, oldest first, in the shape of OPA's decision
    /// log (decision_id, timestamp, input, result, bundles) for a SIEM.
    Export {
        #[arg(long, default_value = "jsonl", value_parser = ["jsonl"])]
        format: String,
        #[command(flatten)]
        filter: FilterArgs,
    },
}

#[derive(Args, Debug)]
pub struct SessionsArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// A session id from `agentguard sessions`.
    pub session: u64,
    /// Play N times faster than it happened.
    #[arg(long, default_value_t = 1.0, conflicts_with = "instant")]
    pub speed: f64,
    /// No pauses.
    #[arg(long)]
    pub instant: bool,
    /// The session record and its frames as JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// The database the CLI reads: the config's state_dir, else the per-user
/// folder `exec` falls back to when it cannot write there.
fn reader(config: &Config) -> Result<Reader, AuditError> {
    let (reader, dir) = match Reader::open(&config.state_dir) {
        Err(AuditError::NoDatabase(p)) => {
            let fallback = super::user_state_dir();
            if fallback != config.state_dir && fallback.join(store::FILE_NAME).exists() {
                (Reader::open(&fallback)?, fallback)
            } else {
                return Err(AuditError::NoDatabase(p));
            }
        }
        other => (other?, config.state_dir.clone()),
    };
    reader.catch_up(&dir, std::time::Duration::from_secs(2));
    Ok(reader)
}

pub async fn audit(config: &Config, args: AuditArgs) -> Result<i32, AuditError> {
    if let Some(AuditCommand::Export { filter, .. }) = &args.command {
        return export(config, filter);
    }
    let filter = args.filter.filter()?;
    let reader = reader(config)?;
    let out = std::io::stdout();
    let mut out = out.lock();
    let records = reader.decisions(&filter, args.limit)?;
    if !args.json {
        print_header(&mut out);
    }
    for r in &records {
        print_decision(&mut out, r, args.json);
    }
    let _ = out.flush();
    drop(out);
    if !args.follow {
        return Ok(0);
    }
    let mut last = match records.last().and_then(|r| r.id) {
        Some(id) => Some(id),
        None => reader.last_decision()?,
    };
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let new = reader.decisions_after(last, &filter, 1000)?;
        let out = std::io::stdout();
        let mut out = out.lock();
        for r in &new {
            print_decision(&mut out, r, args.json);
            last = r.id.or(last);
        }
        if out.flush().is_err() {
            // Reader went away (`| head`).
            return Ok(0);
        }
    }
}

fn print_header(out: &mut impl std::io::Write) {
    let _ = writeln!(
        out,
        "{:<23} {:<10} {:<10} {:<21} {:<7} {:<48} REASON",
        "TIME (UTC)", "AGENT", "USER", "TARGET", "ACTION", "REQUEST"
    );
}

fn print_decision(out: &mut impl std::io::Write, r: &DecisionRecord, json: bool) {
    if json {
        let _ = writeln!(out, "{}", decision_json(r));
        return;
    }
    let id = r.identity.as_ref();
    let user = id.map_or_else(
        || "-".to_owned(),
        |i| i.user.clone().unwrap_or_else(|| i.uid.to_string()),
    );
    let target = r.target.as_ref().map_or_else(
        || "-".to_owned(),
        |t| t.name.clone().unwrap_or_else(|| target_addr(t)),
    );
    let mut request = r.request.line();
    if !r.masks.is_empty() {
        let masks: Vec<String> = r.masks.iter().map(|(k, v)| format!("{k}×{v}")).collect();
        request = format!("{request} [masked {}]", masks.join(" "));
    }
    let _ = writeln!(
        out,
        "{:<23} {:<10} {:<10} {:<21} {:<7} {:<48} {}",
        time::rfc3339(r.time_ns)
            .replace('T', " ")
            .trim_end_matches('Z'),
        clip(r.agent().unwrap_or("-"), 10),
        clip(&user, 10),
        clip(&target, 21),
        action_str(r.action),
        clip(&request, 48),
        r.reason
    );
}

/// `s` cut to `n` characters, with an ellipsis when cut (table cells).
pub fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_owned();
    }
    let mut c: String = s.chars().take(n.saturating_sub(1)).collect();
    c.push('…');
    c
}

/// A record as one JSON object, with a readable id and timestamp.
pub fn decision_json(r: &DecisionRecord) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "decision_id".into(),
            json!(r.id.map(|i| i.to_string()).unwrap_or_default()),
        );
        o.insert("timestamp".into(), json!(time::rfc3339(r.time_ns)));
        o.insert("agent".into(), json!(r.agent()));
    }
    v
}

fn export(config: &Config, args: &FilterArgs) -> Result<i32, AuditError> {
    let filter = args.filter()?;
    let reader = reader(config)?;
    let out = std::io::stdout();
    let mut out = out.lock();
    let mut after = None;
    loop {
        let page = reader.decisions_after(after, &filter, 5000)?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for r in &page {
            if writeln!(out, "{}", opa_json(r)).is_err() {
                return Ok(0);
            }
        }
        if after.is_none() {
            break;
        }
    }
    let _ = out.flush();
    Ok(0)
}

/// OPA decision-log fields where they map; agentguard's own under
/// `agentguard`.
fn opa_json(r: &DecisionRecord) -> Value {
    let request = serde_json::to_value(&r.request).unwrap_or(Value::Null);
    json!({
        "decision_id": r.id.map(|i| i.to_string()).unwrap_or_default(),
        "timestamp": time::rfc3339(r.time_ns),
        "path": "agentguard/decision",
        "input": {"identity": r.identity, "target": r.target, "request": request},
        "result": {"action": action_str(r.action), "reason": r.reason, "mask": r.mask_rules},
        "bundles": {"agentguard": {"revision": r.policy_version}},
        "requested_by": r.peer,
        "metrics": {"timer_agentguard_decision_ns": r.latency_us.saturating_mul(1000)},
        "labels": {"app": "agentguard"},
        "agentguard": {
            "session_id": r.session_id, "masks": r.masks, "rows": r.rows,
            "approver": r.approver, "latency_us": r.latency_us,
        },
    })
}

pub fn sessions(config: &Config, args: SessionsArgs) -> Result<i32, AuditError> {
    let filter = args.filter.filter()?;
    let action = filter.action.clone();
    let reader = reader(config)?;
    let list: Vec<SessionRecord> = reader
        .sessions(&filter, args.limit)?
        .into_iter()
        // --action on sessions: those with at least one such decision.
        .filter(|s| match action.as_deref() {
            Some("deny") => s.counts.denied > 0,
            Some("allow") => s.counts.allowed > 0,
            _ => true,
        })
        .collect();
    let out = std::io::stdout();
    let mut out = out.lock();
    if args.json {
        for s in &list {
            let _ = writeln!(out, "{}", session_json(s));
        }
        return Ok(0);
    }
    let _ = writeln!(
        out,
        "{:<20} {:<23} {:>8} {:<10} {:<10} {:<21} {:<18} {:>5} {:>5} {:>5} {:>6} {:>6}",
        "SESSION",
        "START (UTC)",
        "SECS",
        "AGENT",
        "USER",
        "TARGET",
        "DB",
        "REQS",
        "ALLOW",
        "DENY",
        "ROWS",
        "MASKED"
    );
    for s in &list {
        let id = s.identity.as_ref();
        let user = id.map_or_else(
            || "-".to_owned(),
            |i| i.user.clone().unwrap_or_else(|| i.uid.to_string()),
        );
        let target = s.target.as_ref().map_or_else(
            || "-".to_owned(),
            |t| t.name.clone().unwrap_or_else(|| target_addr(t)),
        );
        let db = match (s.details.get("db_user"), s.details.get("database")) {
            (Some(u), Some(d)) => format!("{u}@{d}"),
            (None, Some(d)) => d.clone(),
            _ => "-".into(),
        };
        let secs = match s.end_ns {
            Some(e) => format!("{:.1}", e.saturating_sub(s.start_ns) as f64 / 1e9),
            None => "open".into(),
        };
        let _ = writeln!(
            out,
            "{:<20} {:<23} {:>8} {:<10} {:<10} {:<21} {:<18} {:>5} {:>5} {:>5} {:>6} {:>6}",
            s.id,
            time::rfc3339(s.start_ns)
                .replace('T', " ")
                .trim_end_matches('Z'),
            secs,
            clip(id.and_then(|i| i.agent.as_deref()).unwrap_or("-"), 10),
            clip(&user, 10),
            clip(&target, 21),
            clip(&db, 18),
            s.counts.requests,
            s.counts.allowed,
            s.counts.denied,
            s.counts.rows,
            s.counts.masked
        );
    }
    Ok(0)
}

fn session_json(s: &SessionRecord) -> Value {
    let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("start".into(), json!(time::rfc3339(s.start_ns)));
        o.insert("end".into(), json!(s.end_ns.map(time::rfc3339)));
    }
    v
}

/// Gaps longer than this are cut short, so an idle agent does not stall
/// the replay.
const MAX_PAUSE: Duration = Duration::from_secs(3);

pub async fn replay(config: &Config, args: ReplayArgs) -> Result<i32, AuditError> {
    if !(args.speed > 0.0 && args.speed.is_finite()) {
        return Err(AuditError::Usage(
            "--speed must be a positive number".into(),
        ));
    }
    let reader = reader(config)?;
    let Some(session) = reader.session(args.session)? else {
        return Err(AuditError::Usage(format!(
            "no session {} (see `agentguard sessions`; it may have expired)",
            args.session
        )));
    };
    let frames = reader.frames(args.session)?;
    if args.json {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", session_json(&session));
        for f in &frames {
            let _ = writeln!(out, "{}", serde_json::to_value(f).unwrap_or(Value::Null));
        }
        return Ok(0);
    }
    print_session_header(&session);
    let mut prev = session.start_ns;
    let mut columns: Vec<String> = Vec::new();
    for f in &frames {
        if !args.instant {
            let gap = Duration::from_nanos(f.time_ns.saturating_sub(prev)).min(MAX_PAUSE);
            tokio::time::sleep(gap.div_f64(args.speed)).await;
        }
        prev = f.time_ns;
        print_frame(f, session.start_ns, &mut columns);
    }
    let c = &session.counts;
    let how = match (session.end_ns, &session.error) {
        (Some(e), None) => format!(
            "ended after {:.2}s",
            e.saturating_sub(session.start_ns) as f64 / 1e9
        ),
        (Some(_), Some(err)) => format!("ended with an error: {err}"),
        (None, _) => "still open (or its guard stopped without closing it)".into(),
    };
    println!(
        "── session {how}: {} requests ({} allowed, {} denied), {} rows, {} values masked",
        c.requests, c.allowed, c.denied, c.rows, c.masked
    );
    Ok(0)
}

fn print_session_header(s: &SessionRecord) {
    println!("── session {} started {}", s.id, time::rfc3339(s.start_ns));
    if let Some(i) = &s.identity {
        println!(
            "   agent {} · uid {} ({}) · pid {} · {} · cgroup {}",
            i.agent.as_deref().unwrap_or("-"),
            i.uid,
            i.user.as_deref().unwrap_or("?"),
            i.pid,
            i.exe.as_deref().unwrap_or(&i.comm),
            i.cgroup.as_deref().unwrap_or("-")
        );
    }
    if let Some(t) = &s.target {
        println!(
            "   target {} {} ({})",
            t.name.as_deref().unwrap_or("-"),
            target_addr(t),
            serde_json::to_value(t.protocol)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        );
    }
    if !s.details.is_empty() {
        let d: Vec<String> = s.details.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("   {}", d.join(" · "));
    }
}

fn print_frame(f: &FrameRecord, start: u64, columns: &mut Vec<String>) {
    let at = format!("[+{:>8.3}s]", f.time_ns.saturating_sub(start) as f64 / 1e9);
    match &f.frame {
        Frame::Request {
            request,
            action,
            reason,
            ..
        } => {
            println!("{at} > {}", request.line());
            let mark = match action {
                Action::Allow => "allowed",
                Action::Deny => "DENIED",
                Action::Approve => "held for approval",
            };
            println!("{:13} {mark}: {reason}", "");
        }
        Frame::Columns { names } => {
            columns.clone_from(names);
            println!("{:13} {}", "", names.join(" | "));
        }
        Frame::Rows { rows } => {
            for row in rows {
                let cells: Vec<&str> = row.iter().map(|v| v.as_deref().unwrap_or("NULL")).collect();
                println!("{:13} {}", "", cells.join(" | "));
            }
        }
        Frame::Text { text } => {
            for line in text.lines() {
                println!("{:13} {line}", "");
            }
        }
        Frame::Complete { tag, omitted, .. } => {
            if *omitted > 0 {
                println!("{:13} … {omitted} more rows (not recorded)", "");
            }
            println!("{:13} ({tag})", "");
            columns.clear();
        }
        Frame::Error { code, message } => {
            println!("{at} ! ERROR {code}: {message}");
        }
    }
}

/// `status` line for the audit log, from the writer's counters file.
pub fn status_line(stats_file: &Path) -> Option<String> {
    let s: super::StatsSnapshot = serde_json::from_slice(&std::fs::read(stats_file).ok()?).ok()?;
    Some(format!(
        "audit:     {} ({:.1} MiB), {} records written, {} queued, queue full {}×, overload denials {}, write errors {}, expired {}",
        s.path,
        s.file_bytes as f64 / (1 << 20) as f64,
        s.written,
        s.queued,
        s.queue_full,
        s.overload_denied,
        s.write_errors,
        s.expired
    ))
}

pub fn stats_file(run_dir: &Path) -> PathBuf {
    run_dir.join("audit.json")
}
