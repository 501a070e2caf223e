//! The audit log at scale: `cargo bench -p agentguard --bench audit [-- RECORDS]`.
//!
//! 1. Write rate: RECORDS (default 1,000,000) decision records through the
//!    daemon's own path (`Recorder` → bounded queue → writer thread →
//!    masking → batched redb commits), sent by 8 tasks at once; records/s
//!    from the first send until the last is committed. Records are spread
//!    over 50 agents, 20 targets, three actions and the last 24 hours.
//! 2. Commit wait: what a reply waits for its decision's commit
//!    (`[audit] commit_before_reply`) on an idle writer, one at a time.
//! 3. Queries on that file: the release `agentguard audit …` command, run
//!    as a user would (process start, open, query, print), 20 times each;
//!    median and worst wall time. The same query in-process shows what
//!    the store itself takes.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use agentguard::{
    audit::{
        self, DecisionRecord, RequestSummary,
        store::{Filter, Reader},
    },
    config::{Config, Protocol},
    decide::{Action, Decision, Target},
    identity::Identity,
};

const AGENTS: u64 = 50;
const TARGETS: u64 = 20;
const SENDERS: u64 = 8;
const DAY_NS: u64 = 86_400 * 1_000_000_000;

fn record(i: u64, now_ns: u64, records: u64) -> DecisionRecord {
    // A cheap scramble so neighbours differ in agent, target and action.
    let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11;
    let agent = format!("agent-{}", h % AGENTS);
    let action = match h % 100 {
        0 => Action::Approve,
        1..=19 => Action::Deny,
        _ => Action::Allow,
    };
    let identity = Identity {
        uid: 1000 + (h % 10) as u32,
        gid: 1000,
        user: Some("agent".into()),
        pid: 4000 + (h % 500) as u32,
        comm: "python3".into(),
        exe: Some("/usr/bin/python3.11".into()),
        cmdline: vec!["python3".into(), "agent.py".into(), "--task".into()],
        cgroup: Some(format!("/agentguard/{agent}")),
        cgroup_id: 7000 + h % AGENTS,
        agent: Some(agent),
        unit: None,
    };
    let target = Target {
        ip: "10.0.0.1".into(),
        port: 5432,
        name: Some(format!("db-{}", (h >> 8) % TARGETS)),
        protocol: Protocol::Postgres,
        host: None,
        labels: vec![],
    };
    let decision = Decision {
        action,
        reason: "bench policy".into(),
        mask: vec!["email".into()],
        policy_version: "0123456789abcdef".into(),
        approver: None,
    };
    let mut r = DecisionRecord::new(
        Some(i / 20),
        Some(&identity),
        Some(&target),
        RequestSummary::Sql {
            sql: format!("SELECT id, name, email FROM customers WHERE id = {i}"),
            protocol: "simple".into(),
            operations: vec!["select".into()],
            tables: vec!["customers".into()],
            database: Some("app".into()),
            db_user: Some("app".into()),
        },
        &decision,
        Duration::from_micros(40),
    );
    // Oldest first, evenly over the last day.
    r.time_ns = now_ns - DAY_NS + i * (DAY_NS / records.max(1));
    r
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let records: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let config_path = dir.path().join("agentguard.toml");
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let text = format!(
        "state_dir = \"{}\"\nrun_dir = \"{}\"\npolicy_dir = \"{}\"\n[audit]\nmax_db_bytes = {}\n",
        state.display(),
        dir.path().join("run").display(),
        policies.display(),
        64u64 << 30,
    );
    std::fs::write(&config_path, &text).expect("config");
    let config = Config::parse(&config_path, &text).expect("config parses");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    println!(
        "audit bench: {records} records, {SENDERS} senders, on {}",
        cpu()
    );
    let (rate, waits, stats) = rt.block_on(async {
        let (rec, writer) =
            audit::open(&state, &config, audit::OpenOptions::default()).expect("open");
        let now = audit::time::now_ns();
        let started = Instant::now();
        let tasks: Vec<_> = (0..SENDERS)
            .map(|s| {
                let rec = rec.clone();
                tokio::spawn(async move {
                    let mut i = s;
                    while i < records {
                        rec.decision(record(i, now, records))
                            .await
                            .expect("block mode never refuses");
                        i += SENDERS;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("sender");
        }
        rec.flush().await;
        let rate = records as f64 / started.elapsed().as_secs_f64();
        let stats = rec.stats().expect("stats");

        // One reply at a time on an idle writer: the commit it waits for.
        let mut waits = Vec::new();
        for i in 0..200 {
            let session = rec.session(rec.new_session_id());
            let t = Instant::now();
            session
                .decision(record(records + i, now, records))
                .await
                .expect("queued");
            session.committed().await.expect("committed");
            waits.push(t.elapsed());
        }
        waits.sort();
        writer.close().await;
        (rate, waits, stats)
    });
    let file = std::fs::metadata(state.join(audit::store::FILE_NAME)).map_or(0, |m| m.len());
    println!(
        "write: {rate:.0} records/s sustained ({} batches, {:.0} records per commit), file {:.0} MiB ({:.0} bytes per record)",
        stats.batches,
        stats.written as f64 / stats.batches.max(1) as f64,
        file as f64 / (1 << 20) as f64,
        file as f64 / records as f64,
    );
    println!(
        "commit wait of one reply on an idle writer: median {}, p90 {}, max {}",
        ms(percentile(&waits, 0.5)),
        ms(percentile(&waits, 0.9)),
        ms(percentile(&waits, 1.0)),
    );

    let queries: [&[&str]; 4] = [
        &["--agent", "agent-7", "--since", "1h", "--limit", "50"],
        &["--target", "db-3", "--action", "deny", "--limit", "50"],
        &["--uid", "1004", "--since", "1h", "--limit", "50"],
        &["--limit", "50"],
    ];
    println!(
        "\nquery (20 runs each)                                 command: median / max   in-process: median"
    );
    for q in queries {
        let mut times = Vec::new();
        let mut lines = 0;
        for _ in 0..20 {
            let t = Instant::now();
            let out = Command::new(env!("CARGO_BIN_EXE_agentguard"))
                .arg("--config")
                .arg(&config_path)
                .arg("audit")
                .args(q)
                .output()
                .expect("agentguard audit");
            times.push(t.elapsed());
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            lines = out.stdout.iter().filter(|&&b| b == b'\n').count();
        }
        times.sort();
        let filter = filter_of(q);
        let reader = Reader::open(&state).expect("reader");
        let mut inproc = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let found = reader.decisions(&filter, 50).expect("query");
            inproc.push(t.elapsed());
            assert!(!found.is_empty(), "{q:?} finds records");
        }
        inproc.sort();
        println!(
            "  audit {:<44} {:>9} / {:>9}   {:>9}   ({} lines)",
            q.join(" "),
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 1.0)),
            ms(percentile(&inproc, 0.5)),
            lines,
        );
    }
}

fn filter_of(q: &[&str]) -> Filter {
    let mut f = Filter::default();
    let now = audit::time::now_ns();
    for pair in q.chunks(2) {
        match pair {
            ["--agent", a] => f.agent = Some((*a).to_owned()),
            ["--target", t] => f.target = Some((*t).to_owned()),
            ["--action", a] => f.action = Some((*a).to_owned()),
            ["--uid", u] => f.uid = u.parse().ok(),
            ["--since", "1h"] => f.since_ns = Some(now - 3_600_000_000_000),
            _ => {}
        }
    }
    f
}

fn cpu() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{model}, {cores} cores")
}
