//! The store and the writer on a real redb file in a temp folder.

use std::{collections::BTreeMap, path::Path, time::Duration};

use super::{
    store::{Filter, Write},
    *,
};
use crate::{
    config::Protocol,
    decide::{Action, Decision, Target},
};

fn identity(agent: &str, uid: u32) -> Identity {
    Identity {
        uid,
        gid: uid,
        user: Some(format!("user{uid}")),
        pid: 42,
        comm: "psql".into(),
        exe: Some("/usr/bin/psql".into()),
        cmdline: vec!["psql".into()],
        cgroup: Some(format!("/agentguard/{agent}")),
        cgroup_id: 7,
        agent: Some(agent.into()),
        unit: None,
    }
}

fn target(name: &str) -> Target {
    Target {
        ip: "127.0.0.1".into(),
        port: 5432,
        name: Some(name.into()),
        protocol: Protocol::Postgres,
        host: Some("localhost".into()),
        labels: vec![],
    }
}

fn decision(action: Action) -> Decision {
    Decision {
        action,
        reason: format!("{action:?} because"),
        mask: vec!["email".into()],
        policy_version: "v1".into(),
        approver: None,
    }
}

fn record(agent: &str, uid: u32, tgt: &str, action: Action, sql: &str) -> DecisionRecord {
    DecisionRecord::new(
        None,
        Some(&identity(agent, uid)),
        Some(&target(tgt)),
        RequestSummary::Sql {
            sql: sql.into(),
            protocol: "simple".into(),
            operations: vec!["select".into()],
            tables: vec![],
            database: Some("app".into()),
            db_user: Some("postgres".into()),
        },
        &decision(action),
        Duration::from_micros(120),
    )
}

fn config(extra: &str) -> Config {
    Config::parse(Path::new("t.toml"), extra).expect("config")
}

fn open_with(dir: &Path, cfg: &Config, interval: Option<Duration>) -> (Recorder, AuditWriter) {
    super::open(
        dir,
        cfg,
        OpenOptions {
            stats_file: None,
            retention_interval: interval,
            retention_step: None,
        },
    )
    .expect("open")
}

/// Queues one allowed `SELECT {i}` (padded with `filler`) per `i`.
async fn fill(rec: &Recorder, range: std::ops::Range<usize>, filler: &str) {
    for i in range {
        let sql = if filler.is_empty() {
            format!("SELECT {i}")
        } else {
            format!("SELECT {i} /* {filler} */")
        };
        rec.decision(record("coder", 1000, "db", Action::Allow, &sql))
            .await
            .expect("queued");
    }
}

#[tokio::test]
async fn batches_and_reads_back() {
    let dir = tempfile::tempdir().expect("tmp");
    let (rec, writer) = open_with(dir.path(), &config(""), None);
    fill(&rec, 0..2000, "").await;
    rec.flush().await;
    let stats = rec.stats().expect("enabled");
    assert_eq!(stats.written, 2000);
    assert!(
        stats.batches <= 2000 / 100,
        "records must be committed in batches, got {} commits",
        stats.batches
    );
    let reader = store::Reader::open(dir.path()).expect("reader beside the writer");
    let got = reader.decisions(&Default::default(), 10).expect("query");
    assert_eq!(got.len(), 10);
    // The newest ten, oldest first.
    let sqls: Vec<String> = got.iter().map(|r| r.request.line()).collect();
    assert_eq!(sqls.first().map(String::as_str), Some("SELECT 1990"));
    assert_eq!(sqls.last().map(String::as_str), Some("SELECT 1999"));
    writer.close().await;
    // Closed: further records are refused, not lost silently.
    assert!(matches!(
        rec.decision(record("coder", 1, "db", Action::Allow, "x"))
            .await,
        Err(AuditError::Closed)
    ));
}

#[tokio::test]
async fn indexes_filter_and_order() {
    let dir = tempfile::tempdir().expect("tmp");
    let (rec, writer) = open_with(dir.path(), &config(""), None);
    let base = time::now_ns() - 10_000_000_000;
    for i in 0..300u64 {
        let (agent, uid, tgt, action) = match i % 3 {
            0 => ("coder", 1000, "app-db", Action::Allow),
            1 => ("reviewer", 1001, "billing", Action::Deny),
            _ => ("coder", 1002, "billing", Action::Allow),
        };
        let mut r = record(agent, uid, tgt, action, &format!("q{i}"));
        r.time_ns = base + i * 1_000_000;
        rec.decision(r).await.expect("queued");
    }
    rec.flush().await;
    writer.close().await;
    let reader = store::Reader::open(dir.path()).expect("reader");
    let q = |f: Filter, limit| reader.decisions(&f, limit).expect("query");

    let coder = q(
        Filter {
            agent: Some("coder".into()),
            ..Default::default()
        },
        1000,
    );
    assert_eq!(coder.len(), 200);
    assert!(coder.windows(2).all(|w| w[0].time_ns <= w[1].time_ns));

    let denied = q(
        Filter {
            action: Some("deny".into()),
            ..Default::default()
        },
        5,
    );
    assert_eq!(denied.len(), 5);
    assert!(denied.iter().all(|r| r.action == Action::Deny));
    assert_eq!(denied.last().map(|r| r.request.line()), Some("q298".into()));

    // Two filters: one index scanned, the other checked.
    let both = q(
        Filter {
            agent: Some("coder".into()),
            target: Some("billing".into()),
            ..Default::default()
        },
        1000,
    );
    assert_eq!(both.len(), 100);
    assert!(
        both.iter()
            .all(|r| r.identity.as_ref().map(|i| i.uid) == Some(1002))
    );
    // Targets answer to ip:port too.
    assert_eq!(
        q(
            Filter {
                target: Some("127.0.0.1:5432".into()),
                ..Default::default()
            },
            1000
        )
        .len(),
        300
    );
    let by_uid = q(
        Filter {
            uid: Some(1001),
            since_ns: Some(base + 150 * 1_000_000),
            until_ns: Some(base + 200 * 1_000_000),
            ..Default::default()
        },
        1000,
    );
    let lines: Vec<String> = by_uid.iter().map(|r| r.request.line()).collect();
    assert_eq!(lines.first().map(String::as_str), Some("q151"));
    assert_eq!(lines.last().map(String::as_str), Some("q199"));
    assert!(
        q(
            Filter {
                agent: Some("nobody".into()),
                ..Default::default()
            },
            10
        )
        .is_empty()
    );
}

#[tokio::test]
async fn sessions_frames_and_results() {
    let dir = tempfile::tempdir().expect("tmp");
    let (rec, writer) = open_with(dir.path(), &config(""), None);
    let s = rec.session(rec.new_session_id());
    let who = identity("coder", 0);
    s.start(Some(&who), Some(&target("app-db")))
        .await
        .expect("start");
    s.details(BTreeMap::from([("database".into(), "app".into())]))
        .await;
    let mut r = record(
        "coder",
        0,
        "app-db",
        Action::Allow,
        "SELECT email FROM users",
    );
    r.session_id = Some(s.id);
    let d = s.decision(r).await.expect("queued");
    let mut rr = s.result_recorder(d);
    rr.columns(vec!["email".into()]).await;
    rr.row(Some(vec![Some("a***@example.com".into())])).await;
    rr.masked([("email", 1)]);
    rr.complete("SELECT 1".into()).await;
    rr.finish().await;
    s.decision(record(
        "coder",
        0,
        "app-db",
        Action::Deny,
        "DROP TABLE users",
    ))
    .await
    .expect("queued");
    s.end(10, 20, None).await;
    rec.flush().await;

    let reader = store::Reader::open(dir.path()).expect("reader");
    let sessions = reader.sessions(&Default::default(), 10).expect("sessions");
    assert_eq!(sessions.len(), 1);
    let got = &sessions[0];
    assert_eq!(got.id, s.id);
    assert_eq!(got.details.get("database").map(String::as_str), Some("app"));
    assert_eq!(
        got.counts,
        SessionCounts {
            requests: 2,
            allowed: 1,
            denied: 1,
            rows: 1,
            masked: 1,
            bytes_up: 10,
            bytes_down: 20
        }
    );
    assert!(got.end_ns.is_some());
    let frames = reader.frames(s.id).expect("frames");
    let kinds: Vec<&str> = frames
        .iter()
        .map(|f| match &f.frame {
            Frame::Request { .. } => "request",
            Frame::Columns { .. } => "columns",
            Frame::Rows { .. } => "rows",
            Frame::Complete { .. } => "complete",
            Frame::Error { .. } => "error",
            Frame::Text { .. } => "text",
        })
        .collect();
    assert_eq!(
        kinds,
        ["request", "columns", "rows", "complete", "request"],
        "{frames:?}"
    );
    let decisions = reader
        .decisions(&Default::default(), 10)
        .expect("decisions");
    assert_eq!(decisions[0].masks.get("email"), Some(&1));
    assert_eq!(decisions[0].rows, Some(1));
    assert_eq!(decisions[0].session_id, Some(s.id));
    writer.close().await;
}

#[tokio::test]
async fn rows_past_the_cap_are_counted_not_stored() {
    let dir = tempfile::tempdir().expect("tmp");
    let (rec, writer) = open_with(dir.path(), &config("[audit]\nrecord_rows = 150\n"), None);
    let s = rec.session(rec.new_session_id());
    s.start(None, None).await.expect("start");
    let d = s
        .decision(record("a", 0, "t", Action::Allow, "SELECT"))
        .await
        .expect("queued");
    let mut rr = s.result_recorder(d);
    for i in 0..400 {
        let values = rr.wants_row().then(|| vec![Some(i.to_string())]);
        rr.row(values).await;
    }
    rr.complete("SELECT 400".into()).await;
    rr.finish().await;
    rec.flush().await;
    let reader = store::Reader::open(dir.path()).expect("reader");
    let frames = reader.frames(s.id).expect("frames");
    let stored: usize = frames
        .iter()
        .map(|f| match &f.frame {
            Frame::Rows { rows } => rows.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(stored, 150);
    assert!(frames.iter().any(|f| f.frame
        == Frame::Complete {
            tag: "SELECT 400".into(),
            rows: 400,
            omitted: 250
        }));
    assert_eq!(
        reader.decisions(&Default::default(), 1).expect("q")[0].rows,
        Some(400)
    );
    writer.close().await;
}

#[tokio::test]
async fn stored_sql_is_masked_and_passwords_blanked() {
    let dir = tempfile::tempdir().expect("tmp");
    let (rec, writer) = open_with(dir.path(), &config(""), None);
    rec.decision(record(
        "a",
        0,
        "t",
        Action::Allow,
        "INSERT INTO users VALUES ('planted.person@example.com', '4111 1111 1111 1111')",
    ))
    .await
    .expect("queued");
    rec.decision(record(
        "a",
        0,
        "t",
        Action::Deny,
        "ALTER ROLE app PASSWORD 'sw0rdfish-planted'",
    ))
    .await
    .expect("queued");
    rec.flush().await;
    writer.close().await;
    let raw = std::fs::read(dir.path().join(store::FILE_NAME)).expect("file");
    for planted in [
        "planted.person@example.com",
        "4111 1111 1111 1111",
        "sw0rdfish-planted",
    ] {
        assert!(
            !raw.windows(planted.len()).any(|w| w == planted.as_bytes()),
            "{planted} is in the database file"
        );
    }
}

#[test]
fn retention_by_age_removes_records_and_index_entries() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = store::Store::open(dir.path()).expect("store");
    let old = time::now_ns() - 40 * 86_400_000_000_000;
    let now = time::now_ns();
    let batch: Vec<Write> = (0..51u64)
        .map(|i| {
            let mut r = record("coder", 1000, "db", Action::Allow, &format!("old {i}"));
            r.time_ns = if i == 50 { now } else { old + i };
            r.id = Some(DecisionId {
                time_ns: r.time_ns,
                seq: i,
            });
            Write::Decision {
                record: Box::new(r),
                frame_seq: None,
            }
        })
        .collect();
    store.apply(&batch).expect("write");
    let cutoff = time::now_ns() - 30 * 86_400_000_000_000;
    let (n, more) = store.expire(cutoff, 20).expect("expire");
    assert_eq!((n, more), (20, true), "bounded steps");
    let (n, more) = store.expire(cutoff, 1000).expect("expire");
    assert_eq!((n, more), (30, false));
    drop(store);
    let reader = store::Reader::open(dir.path()).expect("reader");
    for f in [
        Filter {
            agent: Some("coder".into()),
            ..Default::default()
        },
        Filter {
            uid: Some(1000),
            ..Default::default()
        },
        Filter {
            action: Some("allow".into()),
            ..Default::default()
        },
        Filter {
            target: Some("db".into()),
            ..Default::default()
        },
    ] {
        let left = reader.decisions(&f, 100).expect("q");
        assert_eq!(left.len(), 1, "{f:?}");
        assert_eq!(left[0].request.line(), "old 50");
    }
    assert_eq!(reader.counts().expect("counts").0, 1);
}

#[tokio::test]
async fn the_writer_expires_old_records_itself() {
    let dir = tempfile::tempdir().expect("tmp");
    let (rec, writer) = open_with(
        dir.path(),
        &config("[audit]\nretention_days = 1\n"),
        Some(Duration::from_millis(10)),
    );
    let mut r = record("coder", 1000, "db", Action::Allow, "ancient");
    r.time_ns = time::now_ns() - 2 * 86_400_000_000_000;
    rec.decision(r).await.expect("queued");
    rec.decision(record("coder", 1000, "db", Action::Allow, "fresh"))
        .await
        .expect("queued");
    rec.flush().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    writer.close().await;
    let reader = store::Reader::open(dir.path()).expect("reader");
    let left = reader.decisions(&Default::default(), 10).expect("q");
    let lines: Vec<String> = left.iter().map(|r| r.request.line()).collect();
    assert_eq!(lines, ["fresh"]);
}

#[tokio::test]
async fn retention_by_size_keeps_the_file_bounded() {
    let dir = tempfile::tempdir().expect("tmp");
    let max = 4u64 << 20;
    let cfg = config(&format!("[audit]\nmax_db_bytes = {max}\n"));
    let (rec, writer) = open_with(dir.path(), &cfg, Some(Duration::from_millis(10)));
    let filler = "x".repeat(2000);
    for i in 0..5000 {
        rec.decision(record(
            "coder",
            1000,
            "db",
            Action::Allow,
            &format!("SELECT {i} /* {filler} */"),
        ))
        .await
        .expect("queued");
        if i % 50 == 0 {
            rec.flush().await;
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }
    rec.flush().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = rec.stats().expect("stats");
    writer.close().await;
    let len = std::fs::metadata(dir.path().join(store::FILE_NAME))
        .expect("file")
        .len();
    // ~10 MB were written, at most 100 KB per batch; the file stays near the limit.
    assert!(
        len <= max + max / 2,
        "file is {len} bytes, limit {max}: {stats:?}"
    );
    let reader = store::Reader::open(dir.path()).expect("reader");
    let (n, _, _) = reader.counts().expect("counts");
    assert!(n < 5000, "oldest records were deleted ({n} left)");
    let newest = reader.decisions(&Default::default(), 1).expect("q");
    assert!(newest[0].request.line().starts_with("SELECT 4999 "));
}

/// A log past its size limit is trimmed in short steps between batches and
/// never compacted while it serves: records keep being taken (a small
/// queue with on_overload = deny refuses none), the file never shrinks
/// under the writer, and each step deletes a bounded number of records.
#[tokio::test]
async fn size_retention_trims_in_steps_without_stopping_the_queue() {
    let dir = tempfile::tempdir().expect("tmp");
    let max = 2u64 << 20;
    let cfg = config(&format!(
        "[audit]\nmax_db_bytes = {max}\nqueue = 64\non_overload = \"deny\"\n"
    ));
    let step = 50;
    let (rec, writer) = super::open(
        dir.path(),
        &cfg,
        OpenOptions {
            stats_file: None,
            retention_interval: Some(Duration::from_millis(10)),
            retention_step: Some(step),
        },
    )
    .expect("open");
    let file = dir.path().join(store::FILE_NAME);
    let filler = "x".repeat(1000);
    let mut longest = 0u64;
    let mut i = 0;
    while rec.stats().expect("stats").trim_steps < 5 && i < 20_000 {
        // At most 32 queued between flushes (the queue holds 64): a
        // refusal means the writer stopped taking records.
        rec.decision(record(
            "coder",
            1000,
            "db",
            Action::Allow,
            &format!("SELECT {i} /* {filler} */"),
        ))
        .await
        .expect("no refusal: the queue keeps moving while the log is trimmed");
        i += 1;
        if i % 32 == 0 {
            rec.flush().await;
            let len = std::fs::metadata(&file).expect("file").len();
            assert!(
                len >= longest,
                "the file shrank under the writer: {len} < {longest}"
            );
            longest = len;
        }
    }
    rec.flush().await;
    let stats = rec.stats().expect("stats");
    writer.close().await;
    assert!(stats.trim_steps >= 5, "trimming ran in steps: {stats:?}");
    assert!(
        stats.expired <= stats.trim_steps * (step as u64 + 50),
        "each step deletes a bounded number of records: {stats:?}"
    );
    assert_eq!(stats.overload_denied, 0, "{stats:?}");
    assert!(
        longest <= max + max / 2,
        "file {longest} bytes, limit {max}"
    );
    let reader = store::Reader::open(dir.path()).expect("reader");
    let newest = reader.decisions(&Default::default(), 1).expect("q");
    assert!(
        newest[0]
            .request
            .line()
            .starts_with(&format!("SELECT {} ", i - 1))
    );
}

/// A file already past its limit (the limit was lowered) is trimmed and
/// compacted once, at open, before the log serves anyone.
#[tokio::test]
async fn a_file_past_its_limit_shrinks_at_open() {
    let dir = tempfile::tempdir().expect("tmp");
    let (rec, writer) = open_with(dir.path(), &config(""), None);
    fill(&rec, 0..2000, &"y".repeat(2000)).await;
    rec.flush().await;
    writer.close().await;
    let file = dir.path().join(store::FILE_NAME);
    let before = std::fs::metadata(&file).expect("file").len();
    let max = before / 4;
    let (rec, writer) = open_with(
        dir.path(),
        &config(&format!("[audit]\nmax_db_bytes = {max}\n")),
        None,
    );
    let after = std::fs::metadata(&file).expect("file").len();
    rec.flush().await;
    writer.close().await;
    assert!(after <= max, "{before} bytes became {after}, limit {max}");
    let reader = store::Reader::open(dir.path()).expect("reader");
    let newest = reader.decisions(&Default::default(), 1).expect("q");
    assert!(newest[0].request.line().starts_with("SELECT 1999 "));
}

#[tokio::test]
async fn overload_deny_refuses_and_sums_up() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = config("[audit]\nqueue = 2\non_overload = \"deny\"\n");
    let (rec, writer) = open_with(dir.path(), &cfg, None);
    let (release, stalled) = std::sync::mpsc::channel();
    rec.send_raw(Write::Stall(stalled)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..2 {
        rec.decision(record("a", 0, "t", Action::Allow, "fits"))
            .await
            .expect("room in the queue");
    }
    let refused = rec
        .decision(record("a", 0, "t", Action::Allow, "no room"))
        .await;
    assert!(
        matches!(refused, Err(AuditError::Overloaded(2))),
        "{refused:?}"
    );
    let _ = release.send(());
    rec.flush().await;
    let stats = rec.stats().expect("stats");
    assert_eq!(stats.overload_denied, 1);
    assert!(stats.queue_full >= 1);
    let reader = store::Reader::open(dir.path()).expect("reader");
    let all = reader.decisions(&Default::default(), 10).expect("q");
    assert_eq!(all.len(), 3, "two records and the overload summary");
    assert!(
        all.iter()
            .any(|r| r.action == Action::Deny && r.reason.contains("1 requests were denied")),
        "{all:?}"
    );
    writer.close().await;
}

#[tokio::test]
async fn overload_block_waits_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = config("[audit]\nqueue = 2\n");
    let (rec, writer) = open_with(dir.path(), &cfg, None);
    let (release, stalled) = std::sync::mpsc::channel();
    rec.send_raw(Write::Stall(stalled)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r2 = rec.clone();
    let sender = tokio::spawn(async move {
        for i in 0..5 {
            r2.decision(record("a", 0, "t", Action::Allow, &format!("q{i}")))
                .await
                .expect("block mode never refuses");
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!sender.is_finished(), "the caller waits for room");
    let _ = release.send(());
    sender.await.expect("sender");
    rec.flush().await;
    let reader = store::Reader::open(dir.path()).expect("reader");
    assert_eq!(
        reader.decisions(&Default::default(), 10).expect("q").len(),
        5
    );
    assert!(rec.stats().expect("stats").queue_full >= 1);
    writer.close().await;
}

#[test]
fn session_ids_are_unique_and_increasing() {
    let rec = Recorder::disabled();
    let a = rec.new_session_id();
    let b = rec.new_session_id();
    assert_ne!(a, b);
    let dir = tempfile::tempdir().expect("tmp");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let (rec, writer) = open_with(dir.path(), &config(""), None);
        let ids: Vec<u64> = (0..1000).map(|_| rec.new_session_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        writer.close().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_wait_until_their_records_are_committed() {
    // Without a journal (its folder cannot be made), a reply waits for the
    // database: with the committer stalled, it does not go.
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join(super::journal::DIR_NAME), b"").expect("block the journal");
    let (rec, writer) = open_with(dir.path(), &config(""), None);
    let (release, stalled) = std::sync::mpsc::channel();
    rec.send_raw(Write::Stall(stalled)).await;
    let session = rec.session(rec.new_session_id());
    session
        .decision(record("a", 0, "t", Action::Allow, "SELECT 'no journal'"))
        .await
        .expect("queued");
    let s = session.clone();
    let waiting = tokio::spawn(async move { s.committed().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "no journal and the writer is stalled: nothing is committed, so the reply must wait"
    );
    let _ = release.send(());
    waiting.await.expect("join").expect("committed");
    writer.close().await;

    // With the journal, the record is journaled as it is queued: the reply
    // goes even while the committer is stalled, and what the kernel holds
    // (journal and database, copied as they are) recovers it.
    let dir = tempfile::tempdir().expect("tmp");
    let (rec, writer) = open_with(dir.path(), &config(""), None);
    let (release, stalled) = std::sync::mpsc::channel();
    rec.send_raw(Write::Stall(stalled)).await;
    let session = rec.session(rec.new_session_id());
    session
        .decision(record("a", 0, "t", Action::Allow, "SELECT 'held'"))
        .await
        .expect("queued");
    tokio::time::timeout(Duration::from_secs(30), session.committed())
        .await
        .expect("journaled: the reply does not wait for the stalled committer")
        .expect("committed");
    assert!(survives_crash(dir.path(), "SELECT 'held'"));
    let _ = release.send(());

    // Many connections at once: each sees its own record journaled once
    // released, and committed to the database by the next flush.
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let (rec, path) = (rec.clone(), dir.path().to_owned());
            tokio::spawn(async move {
                let s = rec.session(rec.new_session_id());
                let sql = format!("SELECT 'row-{i}'");
                s.decision(record("a", 0, "t", Action::Allow, &sql))
                    .await
                    .expect("queued");
                s.committed().await.expect("committed");
                assert!(
                    journal_text(&path).contains(&format!("row-{i}'")),
                    "{sql} not journaled"
                );
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    rec.flush().await;
    let reader = store::Reader::open(dir.path()).expect("reader");
    let all = reader.decisions(&Default::default(), 100).expect("q");
    assert_eq!(
        all.iter()
            .filter(|r| r.request.line().starts_with("SELECT 'row-"))
            .count(),
        32
    );
    writer.close().await;

    // Off: replies do not wait, even for a stalled writer.
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = config("[audit]\ncommit_before_reply = false\n");
    let (rec, writer) = open_with(dir.path(), &cfg, None);
    let (release, stalled) = std::sync::mpsc::channel();
    rec.send_raw(Write::Stall(stalled)).await;
    let session = rec.session(rec.new_session_id());
    session
        .decision(record("a", 0, "t", Action::Allow, "SELECT 1"))
        .await
        .expect("queued");
    session.committed().await.expect("no wait");
    let _ = release.send(());
    writer.close().await;
}

/// Everything in the journal files under `dir`, as text.
fn journal_text(dir: &std::path::Path) -> String {
    let mut text = String::new();
    for e in std::fs::read_dir(dir.join(super::journal::DIR_NAME))
        .expect("journal dir")
        .flatten()
    {
        text.push_str(&String::from_utf8_lossy(
            &std::fs::read(e.path()).unwrap_or_default(),
        ));
    }
    text
}

/// Copies the log as a killed process would leave it (journal lock files
/// copied are not locked: their writer is "gone") and opens the copy.
fn survives_crash(dir: &std::path::Path, sql: &str) -> bool {
    let copy = tempfile::tempdir().expect("tmp");
    std::fs::copy(
        dir.join(store::FILE_NAME),
        copy.path().join(store::FILE_NAME),
    )
    .expect("copy db");
    let journal = copy.path().join(super::journal::DIR_NAME);
    std::fs::create_dir_all(&journal).expect("mkdir");
    for e in std::fs::read_dir(dir.join(super::journal::DIR_NAME))
        .expect("journal dir")
        .flatten()
    {
        std::fs::copy(e.path(), journal.join(e.file_name())).expect("copy journal");
    }
    let store = store::Store::open(copy.path()).expect("open copy");
    super::journal::recover(&journal, &store).expect("recover");
    drop(store);
    let reader = store::Reader::open(copy.path()).expect("reader");
    let all = reader.decisions(&Default::default(), 1000).expect("q");
    all.iter().any(|r| r.request.line() == sql)
}

#[test]
fn a_dead_writers_journal_is_replayed_once_past_its_mark() {
    use super::journal::{self, Journal};
    let dir = tempfile::tempdir().expect("tmp");
    let jdir = dir.path().join(journal::DIR_NAME);
    let entry = |n: u64, sql: &str| {
        let mut r = record("a", 0, "t", Action::Allow, sql);
        r.id = Some(record::DecisionId {
            time_ns: 1_000 + n,
            seq: n,
        });
        vec![(
            n,
            Write::Decision {
                record: Box::new(r),
                frame_seq: None,
            },
        )]
    };
    let store = store::Store::open(dir.path()).expect("store");
    let mut j = Journal::create(&jdir).expect("journal");
    let id = std::sync::Arc::clone(j.id());
    let (first, second) = (entry(1, "SELECT 'first'"), entry(2, "SELECT 'second'"));
    let append = |j: &mut Journal, e: &[(u64, Write)]| {
        j.append(&journal::encode(&e[0].1).expect("encode"))
            .expect("append")
    };
    assert_eq!(append(&mut j, &first), 1);
    assert_eq!(append(&mut j, &second), 2);
    // A live writer's journal is left alone.
    assert_eq!(journal::recover(&jdir, &store).expect("recover"), 0);
    // Entry 1 reached the database (with its mark); entry 2 did not.
    let mut committed: Vec<Write> = entry(1, "SELECT 'first'")
        .into_iter()
        .map(|(_, w)| w)
        .collect();
    committed.push(Write::JournalMark { id, seq: 1 });
    store.apply(&committed).expect("apply");
    drop(j);
    // The writer died mid-append: a torn third entry.
    let segment = std::fs::read_dir(&jdir)
        .expect("ls")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "journal"))
        .expect("segment");
    let mut bytes = std::fs::read(&segment).expect("read");
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, b'{', b'"']);
    std::fs::write(&segment, bytes).expect("write");

    // And a journal of another dead writer that is all zeroes (power loss
    // after the file grew, before its pages were written): nothing to
    // replay, no error.
    std::fs::write(jdir.join("1-2.lock"), b"").expect("lock");
    std::fs::write(jdir.join("1-2.000000.journal"), vec![0u8; 4096]).expect("zeroes");

    assert_eq!(journal::recover(&jdir, &store).expect("recover"), 1);
    assert_eq!(
        std::fs::read_dir(&jdir).expect("ls").count(),
        0,
        "journal removed"
    );
    drop(store);
    let reader = store::Reader::open(dir.path()).expect("reader");
    let all = reader.decisions(&Default::default(), 10).expect("q");
    let lines: Vec<String> = all.iter().map(|r| r.request.line()).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines.contains(&"SELECT 'first'".to_owned()));
    assert!(lines.contains(&"SELECT 'second'".to_owned()));
}
