//! Between the recorders and the disk:
//! - as a record is queued (`Inner::push`, on the task that made it), what
//!   could still hold a sensitive value is masked ([`sanitize`]) and it is
//!   appended to the journal (journal.rs); the replies waiting on it may go
//!   at once;
//! - the committer, the one thread that writes the database, gathers up to
//!   2048 records (waiting at most 50 ms after the first for more, unless a
//!   reply still waits for one of them: the journal is off or broken),
//!   commits them in one transaction with the journal's mark, publishes the
//!   ticket, and between batches runs retention in small steps so it never
//!   holds the queue up for long (and never compacts the file: that is
//!   done once, at open, if the file is past its limit).

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use agentguard_mask::{Engine, FieldContext, Selection};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use super::{
    AuditError, Commits, DecisionRecord, Frame, Queued, RequestSummary, Stats, StatsSnapshot,
    record::DecisionId,
    store::{Store, Write},
    time,
};
use crate::decide::{Action, Decision};

const MAX_BATCH: usize = 2048;
const LINGER: Duration = Duration::from_millis(50);
/// Records deleted per retention step (one short transaction).
pub(super) const EXPIRE_STEP: usize = 2000;
/// Sessions (each with its frames) deleted per size-retention step.
const SESSION_STEP: usize = 50;

pub(super) struct Retention {
    pub max_age_ns: u64,
    pub max_bytes: u64,
    pub interval: Duration,
    /// Decisions deleted per size-retention step.
    pub step: usize,
}

pub(super) struct Writer {
    pub store: Store,
    pub rx: mpsc::Receiver<Queued>,
    pub commits: Arc<Commits>,
    pub published: Arc<watch::Sender<u64>>,
    pub stats: Arc<Stats>,
    pub retention: Retention,
    pub stats_file: Option<PathBuf>,
    pub capacity: usize,
    /// The journal's id (its mark is committed with each batch) and the
    /// last of its entries committed.
    pub journal: Option<Arc<str>>,
    pub journal_mark: Arc<AtomicU64>,
}

/// Starts the committer; its handle gives the store back when it ends.
pub(super) fn spawn(w: Writer) -> std::io::Result<std::thread::JoinHandle<Store>> {
    std::thread::Builder::new()
        .name("audit-writer".into())
        .spawn(move || {
            let mut w = w;
            w.run();
            w.store
        })
}

pub(super) fn snapshot(stats: &Stats, path: &Path, queued: usize) -> StatsSnapshot {
    StatsSnapshot {
        path: path.display().to_string(),
        written: stats.written.load(Ordering::Relaxed),
        batches: stats.batches.load(Ordering::Relaxed),
        queue_full: stats.queue_full.load(Ordering::Relaxed),
        overload_denied: stats.overload_denied.load(Ordering::Relaxed),
        write_errors: stats.write_errors.load(Ordering::Relaxed),
        expired: stats.expired.load(Ordering::Relaxed),
        trim_steps: stats.trim_steps.load(Ordering::Relaxed),
        queued,
        file_bytes: std::fs::metadata(path).map_or(0, |m| m.len()),
    }
}

/// The batch being gathered, the highest ticket and journal mark in it.
#[derive(Default)]
struct Batch {
    writes: Vec<Write>,
    ticket: u64,
    mark: u64,
}

impl Batch {
    fn take(&mut self, (ticket, seq, w): Queued) {
        #[cfg(test)]
        if let Write::Stall(release) = w {
            let _ = release.recv();
            return;
        }
        self.ticket = self.ticket.max(ticket);
        self.mark = self.mark.max(seq);
        self.writes.push(w);
    }
}

impl Writer {
    /// Someone waits for a ticket not yet committed: commit without lingering.
    fn awaited(&self) -> bool {
        self.commits.wanted.load(Ordering::SeqCst) > *self.published.borrow()
    }

    fn run(&mut self) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                // Without timers: no lingering and no retention, but every
                // record still gets written.
                error!("audit writer runs without timers: {e}");
                while let Some(w) = self.rx.blocking_recv() {
                    let mut batch = Batch::default();
                    batch.take(w);
                    if self.commit(&mut batch, false) {
                        return;
                    }
                }
                return;
            }
        };
        // Timers are created outside `block_on` too.
        let _entered = rt.enter();
        let mut next_retention = Instant::now();
        let mut next_stats = Instant::now();
        let mut trim = Trim::default();
        let mut batch = Batch {
            writes: Vec::with_capacity(MAX_BATCH),
            ..Batch::default()
        };
        loop {
            let idle = next_retention
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1));
            match rt.block_on(tokio::time::timeout(idle, self.rx.recv())) {
                Ok(Some(w)) => batch.take(w),
                Ok(None) => {
                    self.commit(&mut batch, true);
                    return;
                }
                Err(_) => {}
            }
            if !batch.writes.is_empty() {
                let deadline = tokio::time::Instant::now() + LINGER;
                while batch.writes.len() < MAX_BATCH
                    && !matches!(batch.writes.last(), Some(Write::Close))
                {
                    match self.rx.try_recv() {
                        Ok(w) => batch.take(w),
                        Err(mpsc::error::TryRecvError::Disconnected) => break,
                        Err(mpsc::error::TryRecvError::Empty) => {
                            if self.awaited()
                                || batch.writes.iter().any(|w| matches!(w, Write::Flush(_)))
                            {
                                break;
                            }
                            // More records, the deadline, or a reply that
                            // starts waiting (then drain and commit).
                            let more = rt.block_on(async {
                                tokio::select! {
                                    r = tokio::time::timeout_at(deadline, self.rx.recv()) => Some(r),
                                    () = self.commits.wake.notified() => None,
                                }
                            });
                            match more {
                                Some(Ok(Some(w))) => batch.take(w),
                                Some(Ok(None) | Err(_)) => break,
                                None => {}
                            }
                        }
                    }
                }
                let closing = matches!(batch.writes.last(), Some(Write::Close));
                if closing {
                    // Whatever was sent before the close still goes in.
                    self.rx.close();
                    while let Ok(w) = self.rx.try_recv() {
                        batch.take(w);
                    }
                }
                if self.commit(&mut batch, closing) || closing {
                    self.write_stats();
                    return;
                }
            }
            if Instant::now() >= next_retention {
                let more = self.retention_step(&mut trim);
                next_retention = Instant::now()
                    + if more {
                        Duration::from_millis(20)
                    } else {
                        self.retention.interval
                    };
            }
            if Instant::now() >= next_stats {
                self.write_stats();
                next_stats = Instant::now() + Duration::from_secs(2);
            }
        }
    }

    /// Commits `batch`, retrying until it is written: a full disk must not
    /// lose records (the queue fills meanwhile, and on_overload applies).
    /// Returns true when the writer should stop.
    fn commit(&mut self, batch: &mut Batch, closing: bool) -> bool {
        let ticket = batch.ticket;
        let mark = std::mem::take(&mut batch.mark);
        let batch = &mut batch.writes;
        if let (Some(id), true) = (&self.journal, mark > 0) {
            // In the same transaction: a crash never replays what this
            // commit wrote, nor skips what it did not.
            let at = batch
                .iter()
                .position(|w| matches!(w, Write::Close))
                .unwrap_or(batch.len());
            batch.insert(
                at,
                Write::JournalMark {
                    id: Arc::clone(id),
                    seq: mark,
                },
            );
        }
        let stop = batch.iter().any(|w| matches!(w, Write::Close));
        let overloaded = self.stats.overload_unrecorded.swap(0, Ordering::Relaxed);
        if overloaded > 0 {
            batch.push(overload_record(overloaded));
        }
        let records = batch.iter().filter(|w| w.is_record()).count() as u64;
        let mut delay = Duration::from_millis(100);
        let mut attempts = 0;
        let written = loop {
            match self.store.apply(batch) {
                Ok(()) => break true,
                Err(e) => {
                    attempts += 1;
                    self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    if closing && attempts >= 5 {
                        error!(
                            records,
                            "audit: cannot write the last batch while stopping, records lost: {e}"
                        );
                        break false;
                    }
                    error!(records, "audit: commit failed, retrying in {delay:?}: {e}");
                    // `status` shows the failures while this loop lasts.
                    self.write_stats();
                    std::thread::sleep(delay);
                    // Without this, redb would refuse every later commit
                    // (PreviousIo) even once the disk has room again.
                    if let Err(e) = self.store.reopen() {
                        error!("audit: cannot reopen the database: {e}");
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        if written && mark > 0 {
            self.journal_mark.fetch_max(mark, Ordering::Release);
        }
        self.stats.written.fetch_add(records, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Release);
        // Lost records are never reported committed: their waiters see
        // the writer stop instead.
        self.published.send_if_modified(|c| {
            let newer = written && ticket > *c;
            *c = (*c).max(ticket);
            newer
        });
        for w in batch.drain(..) {
            if let Write::Flush(done) = w {
                let _ = done.send(());
            }
        }
        stop
    }
}

/// The last gate before the disk (journal and database): request text and
/// server messages go through the mask engine (with the decision's rules,
/// so the log shows what the agent's view would), and SQL password
/// literals are blanked.
pub(super) fn sanitize(masker: Option<&Engine>, w: &mut Write) {
    let Some(engine) = masker else {
        if let Write::Decision { record, .. } = w
            && let RequestSummary::Sql { sql, .. } = &mut record.request
        {
            *sql = redact_sql_passwords(sql);
        }
        return;
    };
    match w {
        Write::Decision { record, .. } => {
            let sel = engine
                .selection(
                    record.target.as_ref().and_then(|t| t.name.as_deref()),
                    &record.mask_rules,
                )
                .unwrap_or_else(|_| engine.default_selection().clone());
            match &mut record.request {
                RequestSummary::Sql { sql, .. } => {
                    *sql = redact_sql_passwords(&mask_text(engine, &sel, sql));
                }
                RequestSummary::Http { query: Some(q), .. } => {
                    *q = mask_text(engine, &sel, q);
                }
                RequestSummary::Other { summary } => {
                    *summary = mask_text(engine, &sel, summary);
                }
                _ => {}
            }
        }
        Write::Frame { frame, .. } => {
            if let Frame::Error { message, .. } = &mut frame.frame {
                *message = mask_text(engine, engine.default_selection(), message);
            }
        }
        _ => {}
    }
}

impl Writer {
    /// Age first (cheap, in steps), then size. Returns whether more work
    /// is due right away.
    fn retention_step(&mut self, trim: &mut Trim) -> bool {
        if self.retention.max_age_ns > 0 {
            let cutoff = time::now_ns().saturating_sub(self.retention.max_age_ns);
            match self.store.expire(cutoff, EXPIRE_STEP) {
                Ok((n, more)) => {
                    self.stats.expired.fetch_add(n as u64, Ordering::Relaxed);
                    if n > 0 {
                        debug!(records = n, "audit: expired by age");
                    }
                    if more {
                        return true;
                    }
                }
                Err(e) => warn!("audit retention (age): {e}"),
            }
        }
        let max = self.retention.max_bytes;
        if max == 0 {
            return false;
        }
        if trim.left.0 + trim.left.1 == 0 {
            let used = match self.store.used_bytes() {
                Ok(n) => n,
                Err(e) => {
                    warn!("audit retention (size): {e}");
                    return false;
                }
            };
            // redb doubles the file when its data outgrows it: once a
            // doubling would pass `max`, the file's length is the limit.
            let len = self.store.file_len();
            let limit = if len < max && len.saturating_mul(2) > max {
                len
            } else {
                max
            };
            // Past 90% in use, a round down to 80%. Pages a commit freed
            // count until later commits release them: the next round
            // waits for two batches after the last one ended.
            let batches = self.stats.batches.load(Ordering::Relaxed);
            if used <= limit / 10 * 9 || batches < trim.after_batch {
                return false;
            }
            match share_to_trim(&self.store, used, limit) {
                Ok(left) => trim.left = left,
                Err(e) => {
                    warn!("audit retention (size): {e}");
                    return false;
                }
            }
            info!(
                used_bytes = used,
                file_bytes = self.store.file_len(),
                max_db_bytes = max,
                decisions = trim.left.0,
                sessions = trim.left.1,
                "audit: database near its size limit, deleting the oldest records"
            );
        }
        // The file is never compacted while it serves (a rewrite of the
        // whole file stops every commit for seconds): deleted records free
        // pages the next ones reuse.
        let d = trim.left.0.min(self.retention.step);
        let s = trim.left.1.min(SESSION_STEP);
        match self.store.trim_oldest(d, s) {
            Ok(n) => {
                self.stats.expired.fetch_add(n as u64, Ordering::Relaxed);
                self.stats.trim_steps.fetch_add(1, Ordering::Relaxed);
                trim.left = (trim.left.0 - d, trim.left.1 - s);
                if n == 0 {
                    trim.left = (0, 0);
                }
            }
            Err(e) => {
                warn!("audit retention (size): {e}");
                trim.left = (0, 0);
            }
        }
        if trim.left.0 + trim.left.1 > 0 {
            return true;
        }
        trim.after_batch = self.stats.batches.load(Ordering::Relaxed) + 2;
        false
    }
}

/// Size retention's progress: decisions and sessions still to delete in
/// this round, and the batch count the next round waits for.
#[derive(Default)]
pub(super) struct Trim {
    left: (usize, usize),
    after_batch: u64,
}

/// How many of the oldest decisions and sessions to delete to bring `len`
/// bytes down to 80% of `max` (records are assumed alike in size).
fn share_to_trim(store: &Store, len: u64, max: u64) -> Result<(usize, usize), AuditError> {
    let fraction = (1.0 - (max as f64 * 0.8) / len as f64).clamp(0.05, 0.9);
    let (decisions, sessions) = store.lens()?;
    let part = |n: u64| (n as f64 * fraction).ceil() as usize;
    Ok((part(decisions), part(sessions)))
}

/// Before the log serves anyone: a file past `max` (the limit was lowered,
/// or an older version let it grow) is trimmed to 80% and compacted, so it
/// shrinks once rather than stalling commits later.
pub(super) fn shrink_at_open(store: &mut Store, max: u64) {
    let len = store.file_len();
    if max == 0 || len <= max {
        return;
    }
    let started = Instant::now();
    let mut deleted = 0;
    let used = store.used_bytes().unwrap_or(len);
    let share = if used > max / 10 * 9 {
        share_to_trim(store, used, max)
    } else {
        Ok((0, 0))
    };
    match share {
        Ok((mut d, mut s)) => {
            while d + s > 0 {
                let (sd, ss) = (d.min(EXPIRE_STEP), s.min(SESSION_STEP));
                match store.trim_oldest(sd, ss) {
                    Ok(0) => break,
                    Ok(n) => deleted += n,
                    Err(e) => {
                        warn!("audit retention (size): {e}");
                        break;
                    }
                }
                (d, s) = (d - sd, s - ss);
            }
        }
        Err(e) => warn!("audit retention (size): {e}"),
    }
    if let Err(e) = store.compact() {
        warn!("audit: cannot compact the database: {e}");
    }
    info!(
        before = len,
        after = store.file_len(),
        records_deleted = deleted,
        ms = started.elapsed().as_millis() as u64,
        max_db_bytes = max,
        "audit: the database was past its size limit; trimmed and compacted before serving"
    );
}

impl Writer {
    fn write_stats(&self) {
        let Some(path) = &self.stats_file else { return };
        let queued = self.capacity.saturating_sub(self.rx.capacity());
        let snap = snapshot(&self.stats, self.store.path(), queued);
        let Ok(json) = serde_json::to_vec(&snap) else {
            return;
        };
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, json).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }
}

fn mask_text(engine: &Engine, sel: &Selection, text: &str) -> String {
    engine
        .mask_value(text, &FieldContext::text(), sel)
        .value
        .into_owned()
}

/// `PASSWORD 'x'` (CREATE/ALTER ROLE, user mappings) → `PASSWORD '***'`.
pub fn redact_sql_passwords(sql: &str) -> String {
    static RE: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| {
        regex::Regex::new(r"(?i)\b(password|passwd|secret)(\s*=?\s*)(E?'(?:[^']|'')*'|\$\$.*?\$\$)")
            .ok()
    });
    match re {
        Some(re) => re.replace_all(sql, "$1$2'***'").into_owned(),
        None => sql.to_owned(),
    }
}

/// Sums up decisions refused for overload (on_overload = deny), which
/// could not be queued one by one.
fn overload_record(n: u64) -> Write {
    let now = time::now_ns();
    let mut record = DecisionRecord::new(
        None,
        None,
        None,
        RequestSummary::Other {
            summary: format!("{n} requests"),
        },
        &Decision {
            action: Action::Deny,
            reason: format!(
                "agentguard: audit queue full: {n} requests were denied without individual records (on_overload = \"deny\"); the guard's log names each"
            ),
            mask: Vec::new(),
            policy_version: String::new(),
            approver: None,
        },
        Duration::ZERO,
    );
    record.time_ns = now;
    record.id = Some(DecisionId {
        time_ns: now,
        seq: (u64::from(std::process::id()) << 32) | 0xffff_ffff,
    });
    Write::Decision {
        record: Box::new(record),
        frame_seq: None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sql_passwords_are_blanked() {
        assert_eq!(
            super::redact_sql_passwords("ALTER ROLE app WITH PASSWORD 'hunter''2' VALID UNTIL 'x'"),
            "ALTER ROLE app WITH PASSWORD '***' VALID UNTIL 'x'"
        );
        assert_eq!(
            super::redact_sql_passwords("create user u encrypted password 'abc'"),
            "create user u encrypted password '***'"
        );
        assert_eq!(
            super::redact_sql_passwords("SELECT password FROM users"),
            "SELECT password FROM users"
        );
    }
}
