//! The audit log and session recordings: every decision tied to the identity
//! that asked, every guarded connection replayable as the agent saw it.
//!
//! The data path hands records to a [`Recorder`] (cheap to clone); a bounded
//! channel carries them to one writer thread that commits them to
//! `<state_dir>/agentguard.redb` in batches (up to 2048 records, or what
//! arrived within 50 ms of the first). The data path waits on the disk only
//! when the queue is full: then `on_overload = "block"` waits for room and
//! `"deny"` returns [`AuditError::Overloaded`] for decisions, which the
//! caller turns into a deny. Nothing is dropped silently: a commit that
//! fails is retried (the queue fills, and overload handling applies), and
//! decisions refused for overload are counted, logged and summed up in a
//! record once the writer catches up.
//!
//! Crash safety: no byte of a reply goes out before the decision records of
//! its connection are committed ([`SessionHandle::committed`]); what the
//! response adds later (rows, mask counts, frames) is not waited for. Every queued record carries a
//! ticket; the writer publishes the highest committed one, and a waiter
//! makes it commit at once instead of lingering. Commits are shared: under
//! load one commit (two fsyncs) answers every reply waiting for it.
//! `[audit] commit_before_reply = false` trades that for latency.
//!
//! Files: `record.rs` (what is stored), `store.rs` (redb tables, queries,
//! retention), `writer.rs` (the batching thread), `result.rs` (recording one
//! response's rows under a cap), `cli.rs` (`audit`, `sessions`, `replay`),
//! `time.rs`.

pub mod cli;
mod journal;
pub mod record;
pub mod result;
pub mod store;
#[cfg(test)]
mod tests;
pub mod time;
mod writer;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::Serialize;
use tokio::sync::{Notify, mpsc, watch};
use tracing::{error, warn};

pub use record::{
    DecisionId, DecisionRecord, Frame, FrameRecord, RequestSummary, SessionCounts, SessionRecord,
};
pub use result::ResultRecorder;
use store::Write;
pub use writer::redact_sql_passwords;

use crate::{
    config::{Config, OnOverload},
    decide::Target,
    identity::Identity,
};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(
        "audit queue full ({0} records waiting): the audit writer is behind, request refused (on_overload = \"deny\")"
    )]
    Overloaded(usize),
    #[error("the audit writer has stopped; nothing more can be recorded")]
    Closed,
    #[error("cannot create the audit folder {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the audit database {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error(
        "no audit database at {0}: nothing has been recorded with this state_dir yet (check --config / state_dir)"
    )]
    NoDatabase(PathBuf),
    #[error("audit database: {0}")]
    Db(#[from] redb::Error),
    #[error("cannot encode an audit record: {0}")]
    Encode(serde_json::Error),
    #[error("a stored audit record does not decode: {0}")]
    Decode(serde_json::Error),
    #[error("{0}")]
    Usage(String),
}

impl AuditError {
    fn open(path: &Path, e: redb::DatabaseError) -> Self {
        let hint = match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                " (held exclusively by another process)".to_owned()
            }
            redb::DatabaseError::Storage(redb::StorageError::Io(ref io))
                if io.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                " (permission denied: run as root or point --config at a readable state_dir)"
                    .to_owned()
            }
            _ => String::new(),
        };
        Self::Open {
            path: path.to_owned(),
            message: format!("{e}{hint}"),
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for AuditError {
            fn from(e: $t) -> Self {
                Self::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Counters of the recorder, shared with the writer (and shown by `status`).
#[derive(Debug, Default)]
pub struct Stats {
    pub written: AtomicU64,
    pub batches: AtomicU64,
    /// Times a record found the queue full.
    pub queue_full: AtomicU64,
    /// Decisions refused because the queue was full (on_overload = deny).
    pub overload_denied: AtomicU64,
    /// Of those, not yet summed up in a record.
    pub overload_unrecorded: AtomicU64,
    pub write_errors: AtomicU64,
    pub expired: AtomicU64,
    /// Short transactions size retention has run.
    pub trim_steps: AtomicU64,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, Default)]
pub struct StatsSnapshot {
    pub path: String,
    pub written: u64,
    pub batches: u64,
    pub queue_full: u64,
    pub overload_denied: u64,
    pub write_errors: u64,
    pub expired: u64,
    #[serde(default)]
    pub trim_steps: u64,
    pub queued: usize,
    pub file_bytes: u64,
}

/// Where the guard's records go. Clone it freely; a disabled one records
/// nothing (tests, tools that do not audit).
#[derive(Clone)]
pub struct Recorder {
    inner: Option<Arc<Inner>>,
}

/// What the channel carries: the write's ticket (0: none), its journal
/// entry (0: not journaled) and the write.
type Queued = (u64, u64, Write);

/// Tickets in channel order, and the committed watermark.
pub(crate) struct Commits {
    /// Held while a write is journaled and enters the channel, so tickets
    /// and journal entries increase in channel order.
    order: Mutex<Order>,
    /// Highest ticket committed (published by the writer).
    committed: watch::Receiver<u64>,
    /// Highest ticket someone waits for: the writer commits without
    /// lingering while it is above the watermark.
    wanted: AtomicU64,
    /// Wakes a lingering writer when a wait starts.
    wake: Notify,
}

/// The last ticket handed out, and the journal (None: off or broken;
/// replies then wait for the database).
struct Order {
    last: u64,
    journal: Option<journal::Journal>,
}

struct Inner {
    tx: mpsc::Sender<Queued>,
    commits: Arc<Commits>,
    /// Where a journaled ticket is published (replies wait on it).
    published: Arc<watch::Sender<u64>>,
    /// The last journal entry the database holds: closed segments up to it
    /// are deleted.
    journal_mark: Arc<AtomicU64>,
    /// Masks what a record could still hold before it is journaled.
    masker: Option<Arc<agentguard_mask::Engine>>,
    /// Replies wait for their records' commit (crash safety).
    commit_before_reply: bool,
    on_overload: OnOverload,
    capacity: usize,
    stats: Arc<Stats>,
    path: PathBuf,
    last_id: AtomicU64,
    next_seq: AtomicU64,
    record_rows: usize,
    record_bytes: usize,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Some(i) => write!(f, "Recorder({})", i.path.display()),
            None => f.write_str("Recorder(disabled)"),
        }
    }
}

/// The writer thread; [`AuditWriter::close`] drains the queue and stops it.
/// Dropped without `close`, the thread ends once every [`Recorder`] is gone.
pub struct AuditWriter {
    thread: Option<std::thread::JoinHandle<store::Store>>,
    /// None: recording is off (`[audit] enabled = false`).
    tx: Option<mpsc::Sender<Queued>>,
    /// The journal (in `Order`) and its committed mark: deleted on a
    /// clean stop once every entry is in the database.
    commits: Option<(Arc<Commits>, Arc<AtomicU64>)>,
}

impl AuditWriter {
    /// Writes everything queued so far and stops the writer. Records sent
    /// after this fail with [`AuditError::Closed`].
    pub async fn close(mut self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((0, 0, Write::Close)).await;
        }
        let Some(t) = self.thread.take() else { return };
        let Ok(Ok(store)) = tokio::task::spawn_blocking(move || t.join()).await else {
            error!("audit writer thread panicked");
            return;
        };
        let Some((commits, mark)) = self.commits.take() else {
            return;
        };
        let journal = commits
            .order
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .journal
            .take();
        // Only a journal whose every entry is committed may go.
        if let Some(journal) = journal
            && mark.load(Ordering::Acquire) >= journal.last_seq()
        {
            journal.remove(&store);
        }
    }
}

/// Options beyond the config's `[audit]`.
#[derive(Default)]
pub struct OpenOptions {
    /// Where the writer keeps its counters for `agentguard status`.
    pub stats_file: Option<PathBuf>,
    /// How often retention runs (default 60 s).
    pub retention_interval: Option<std::time::Duration>,
    /// Decisions deleted per size-retention step (tests make it small).
    pub retention_step: Option<usize>,
}

/// Opens the database in `dir` and starts its writer. With `[audit]
/// enabled = false`: a recorder that records nothing, and no file.
pub fn open(
    dir: &Path,
    config: &Config,
    options: OpenOptions,
) -> Result<(Recorder, AuditWriter), AuditError> {
    if !config.audit.enabled {
        warn!("[audit] enabled = false: decisions and sessions are not recorded");
        return Ok((
            Recorder::disabled(),
            AuditWriter {
                thread: None,
                tx: None,
                commits: None,
            },
        ));
    }
    let mut store = store::Store::open(dir)?;
    let journal_dir = dir.join(journal::DIR_NAME);
    if let Err(e) = journal::recover(&journal_dir, &store) {
        // Left in place: the next writer to open the log tries again.
        error!("audit: cannot replay the journal of a stopped writer: {e}");
    }
    writer::shrink_at_open(&mut store, config.audit.max_db_bytes);
    let journal = match journal::Journal::create(&journal_dir) {
        Ok(j) => Some(j),
        Err(e) => {
            error!(
                "audit: cannot create a journal in {} ({e}); replies wait for each database commit",
                journal_dir.display()
            );
            None
        }
    };
    let path = store.path().to_owned();
    let capacity = config.audit.queue.max(1);
    let (tx, rx) = mpsc::channel(capacity);
    let stats = Arc::new(Stats::default());
    let (published, committed) = watch::channel(0);
    let published = Arc::new(published);
    let journal_id = journal.as_ref().map(|j| Arc::clone(j.id()));
    let commits = Arc::new(Commits {
        order: Mutex::new(Order { last: 0, journal }),
        committed,
        wanted: AtomicU64::new(0),
        wake: Notify::new(),
    });
    let journal_mark = Arc::new(AtomicU64::new(0));
    let writer = writer::Writer {
        store,
        rx,
        commits: Arc::clone(&commits),
        published: Arc::clone(&published),
        stats: Arc::clone(&stats),
        retention: writer::Retention {
            max_age_ns: config
                .audit
                .retention_days
                .saturating_mul(86_400 * 1_000_000_000),
            max_bytes: config.audit.max_db_bytes,
            interval: options
                .retention_interval
                .unwrap_or(std::time::Duration::from_secs(60)),
            step: options.retention_step.unwrap_or(writer::EXPIRE_STEP).max(1),
        },
        stats_file: options.stats_file,
        capacity,
        journal: journal_id,
        journal_mark: Arc::clone(&journal_mark),
    };
    let thread = writer::spawn(writer).map_err(|source| AuditError::Dir {
        path: path.clone(),
        source,
    })?;
    let recorder = Recorder {
        inner: Some(Arc::new(Inner {
            tx: tx.clone(),
            commits: Arc::clone(&commits),
            published,
            journal_mark: Arc::clone(&journal_mark),
            masker: config.masker.0.clone(),
            commit_before_reply: config.audit.commit_before_reply,
            on_overload: config.audit.on_overload,
            capacity,
            stats,
            path,
            last_id: AtomicU64::new(0),
            next_seq: AtomicU64::new(0),
            record_rows: config.audit.record_rows,
            record_bytes: config.audit.record_bytes,
        })),
    };
    Ok((
        recorder,
        AuditWriter {
            thread: Some(thread),
            tx: Some(tx),
            commits: Some((commits, journal_mark)),
        },
    ))
}

/// The state folder `exec` records to: the config's when it is writable
/// (root), else a per-user one.
pub fn writable_state_dir(config: &Config) -> PathBuf {
    let wanted = &config.state_dir;
    if crate::perms::secure_state_dir(wanted).is_ok() && dir_writable(wanted) {
        return wanted.clone();
    }
    let fallback = user_state_dir();
    if let Err(e) = crate::perms::secure_state_dir(&fallback) {
        warn!("cannot secure {}: {e}", fallback.display());
    }
    warn!(
        state_dir = %wanted.display(),
        fallback = %fallback.display(),
        "state_dir is not writable; recording to a per-user folder"
    );
    fallback
}

/// `$XDG_STATE_HOME/agentguard` or `~/.local/state/agentguard`.
pub fn user_state_dir() -> PathBuf {
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| std::env::temp_dir().join(format!("agentguard-{}", unsafe_uid())))
        .join("agentguard")
}

fn dir_writable(dir: &Path) -> bool {
    let probe = dir.join(format!(".agentguard-probe-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

fn unsafe_uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

/// The connection a record belongs to, and where its frames go next.
#[derive(Clone)]
pub struct SessionHandle {
    recorder: Recorder,
    pub id: u64,
    next_frame: Arc<AtomicU64>,
    /// Ticket of the latest decision of this connection.
    decided: Arc<AtomicU64>,
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session({})", self.id)
    }
}

impl Recorder {
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// A new id for a connection: microseconds since the epoch (strictly
    /// increasing in this process) with the low 12 bits of the pid, so ids
    /// sort by start time and two processes never hand out the same one.
    pub fn new_session_id(&self) -> u64 {
        let pid = u64::from(std::process::id()) & 0xfff;
        let now_us = time::now_ns() / 1000;
        // A disabled recorder's ids are unique too (they name connections
        // in the log): one counter for all of them.
        static DISABLED_LAST: AtomicU64 = AtomicU64::new(0);
        let last = self.inner.as_ref().map_or(&DISABLED_LAST, |i| &i.last_id);
        let mut prev = last.load(Ordering::Relaxed);
        loop {
            let next = now_us.max(prev + 1);
            match last.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return (next << 12) | pid,
                Err(p) => prev = p,
            }
        }
    }

    /// A handle for the frames of connection `id` (from
    /// [`Self::new_session_id`]).
    pub fn session(&self, id: u64) -> SessionHandle {
        SessionHandle {
            recorder: self.clone(),
            id,
            next_frame: Arc::new(AtomicU64::new(0)),
            decided: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Records a decision. `Err` only for on_overload = "deny" with a full
    /// queue (the caller must then deny) or a stopped writer.
    pub async fn decision(&self, record: DecisionRecord) -> Result<DecisionId, AuditError> {
        self.decision_in(None, record).await.map(|(id, _)| id)
    }

    /// The decision's id and its write's ticket.
    async fn decision_in(
        &self,
        session: Option<&SessionHandle>,
        mut record: DecisionRecord,
    ) -> Result<(DecisionId, u64), AuditError> {
        crate::metrics::get().decision(
            record.request.kind(),
            record::action_str(record.action),
            record.latency_us,
        );
        let Some(inner) = &self.inner else {
            let id = DecisionId {
                time_ns: time::now_ns(),
                seq: 0,
            };
            return Ok((id, 0));
        };
        if record.time_ns == 0 {
            record.time_ns = time::now_ns();
        }
        let id = DecisionId {
            time_ns: record.time_ns,
            seq: (u64::from(std::process::id()) << 32)
                | (inner.next_seq.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff),
        };
        record.id = Some(id);
        if let Some(s) = session {
            record.session_id = Some(s.id);
        }
        let frame_seq = session.map(|s| s.next_frame.fetch_add(1, Ordering::Relaxed));
        let write = Write::Decision {
            record: Box::new(record),
            frame_seq,
        };
        self.admit(inner, write).await.map(|ticket| (id, ticket))
    }

    /// Queues what opens a new request or connection: with a full queue
    /// it waits (on_overload = "block") or is refused (`"deny"`). Returns
    /// the write's ticket.
    async fn admit(&self, inner: &Inner, write: Write) -> Result<u64, AuditError> {
        let permit = match inner.tx.try_reserve() {
            Ok(p) => p,
            Err(mpsc::error::TrySendError::Closed(())) => return Err(AuditError::Closed),
            Err(mpsc::error::TrySendError::Full(())) => {
                let full = inner.stats.queue_full.fetch_add(1, Ordering::Relaxed) + 1;
                match inner.on_overload {
                    OnOverload::Block => {
                        // Under sustained load this happens for every
                        // request: one line a second, with the running count.
                        static LAST_WARN_SECS: AtomicU64 = AtomicU64::new(0);
                        let now = time::now_ns() / 1_000_000_000;
                        if LAST_WARN_SECS.swap(now, Ordering::Relaxed) != now {
                            warn!(
                                queue = inner.capacity,
                                times_full = full,
                                "audit queue full: waiting for the writer (on_overload = block)"
                            );
                        }
                        inner.tx.reserve().await.map_err(|_| AuditError::Closed)?
                    }
                    OnOverload::Deny => {
                        inner.stats.overload_denied.fetch_add(1, Ordering::Relaxed);
                        inner
                            .stats
                            .overload_unrecorded
                            .fetch_add(1, Ordering::Relaxed);
                        // The record cannot be queued: the log line is its
                        // trace, and the writer sums such refusals up.
                        match &write {
                            Write::Decision { record, .. } => warn!(
                                agent = record.agent().unwrap_or("-"),
                                uid = record.identity.as_ref().map(|i| i.uid),
                                request = %record.request.line(),
                                "audit queue full: request denied (on_overload = deny)"
                            ),
                            Write::SessionStart(s) => warn!(
                                uid = s.identity.as_ref().map(|i| i.uid),
                                target = s.target.as_ref().and_then(|t| t.name.as_deref()),
                                "audit queue full: connection refused (on_overload = deny)"
                            ),
                            _ => {}
                        }
                        return Err(AuditError::Overloaded(inner.capacity));
                    }
                }
            }
        };
        Ok(inner.push(permit, write))
    }

    /// Frames and session events are never refused: a connection already
    /// under way keeps a complete recording, so they wait for room.
    /// Returns the write's ticket (0 when nothing was queued).
    async fn send(&self, w: Write) -> u64 {
        let Some(inner) = &self.inner else { return 0 };
        let permit = match inner.tx.try_reserve() {
            Ok(p) => Ok(p),
            Err(mpsc::error::TrySendError::Closed(())) => Err(()),
            Err(mpsc::error::TrySendError::Full(())) => {
                inner.stats.queue_full.fetch_add(1, Ordering::Relaxed);
                inner.tx.reserve().await.map_err(|_| ())
            }
        };
        match permit {
            Ok(p) => inner.push(p, w),
            Err(()) => {
                warn!("audit writer stopped; a record was not written");
                0
            }
        }
    }

    /// Resolves once the write with `ticket` (and all before it) is
    /// committed. `Err` when the writer stopped before that.
    pub async fn committed(&self, ticket: u64) -> Result<(), AuditError> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let mut rx = inner.commits.committed.clone();
        if *rx.borrow_and_update() >= ticket {
            return Ok(());
        }
        inner.commits.wanted.fetch_max(ticket, Ordering::SeqCst);
        inner.commits.wake.notify_one();
        rx.wait_for(|&c| c >= ticket)
            .await
            .map(|_| ())
            .map_err(|_| AuditError::Closed)
    }

    /// The counters, for status and tests.
    pub fn stats(&self) -> Option<StatsSnapshot> {
        let inner = self.inner.as_ref()?;
        Some(writer::snapshot(
            &inner.stats,
            &inner.path,
            inner.capacity - inner.tx.capacity(),
        ))
    }

    #[cfg(test)]
    async fn send_raw(&self, w: Write) {
        if let Some(inner) = &self.inner {
            let _ = inner.tx.send((0, 0, w)).await;
        }
    }

    /// Resolves once everything sent before it is committed.
    pub async fn flush(&self) {
        let Some(inner) = &self.inner else { return };
        let (tx, rx) = tokio::sync::oneshot::channel();
        if inner.tx.send((0, 0, Write::Flush(tx))).await.is_ok() {
            let _ = rx.await;
        }
    }
}

impl Inner {
    /// Queues `w` with the next ticket, journaled first: under the lock,
    /// so tickets and journal entries follow channel order, and a ticket
    /// published means every record before it is journaled too.
    fn push(&self, permit: mpsc::Permit<'_, Queued>, mut w: Write) -> u64 {
        writer::sanitize(self.masker.as_deref(), &mut w);
        // Encoded before the lock is taken: under it, only the write(2).
        let encoded = w.is_record().then(|| journal::encode(&w));
        let mut order = self
            .commits
            .order
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        order.last += 1;
        let ticket = order.last;
        let mut seq = 0;
        if let (Some(encoded), Some(j)) = (encoded, order.journal.as_mut()) {
            j.committed(self.journal_mark.load(Ordering::Acquire));
            match encoded.and_then(|e| j.append(&e)) {
                Ok(s) => seq = s,
                Err(e) => {
                    error!(
                        "audit journal: cannot append ({e}); replies now wait for each database commit"
                    );
                    order.journal = None;
                }
            }
        }
        permit.send((ticket, seq, w));
        if seq > 0 {
            self.published.send_if_modified(|c| {
                let newer = ticket > *c;
                *c = (*c).max(ticket);
                newer
            });
        }
        ticket
    }
}

impl SessionHandle {
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    async fn send(&self, w: Write) {
        self.recorder.send(w).await;
    }

    /// Resolves once every decision of this connection so far is
    /// committed: replies wait for this before their bytes go out, so a
    /// crash never loses the record of a request the agent saw answered.
    /// Cheap once committed (replies call it for every write). Immediate
    /// when `[audit] commit_before_reply = false`. `Err`: the writer stopped.
    pub async fn committed(&self) -> Result<(), AuditError> {
        if !self
            .recorder
            .inner
            .as_ref()
            .is_some_and(|i| i.commit_before_reply)
        {
            return Ok(());
        }
        let ticket = self.decided.load(Ordering::Relaxed);
        self.recorder.committed(ticket).await
    }

    /// The connection was allowed and is starting.
    /// A connection not yet under way is refused like a request when the
    /// queue is full and on_overload = "deny": `Err` means the caller must
    /// refuse it.
    pub async fn start(
        &self,
        identity: Option<&Identity>,
        target: Option<&Target>,
    ) -> Result<(), AuditError> {
        let Some(inner) = &self.recorder.inner else {
            return Ok(());
        };
        let now = time::now_ns();
        self.recorder
            .admit(
                inner,
                Write::SessionStart(Box::new(SessionRecord {
                    id: self.id,
                    start_ns: now,
                    end_ns: None,
                    last_ns: now,
                    identity: identity.cloned(),
                    target: target.cloned(),
                    details: BTreeMap::new(),
                    counts: SessionCounts::default(),
                    error: None,
                })),
            )
            .await
            .map(|_| ())
    }

    /// Protocol facts learnt after the start (database, user, …). Never
    /// pass credentials here.
    pub async fn details(&self, details: BTreeMap<String, String>) {
        self.send(Write::SessionDetails {
            id: self.id,
            details,
        })
        .await;
    }

    /// A decision inside this session; its request becomes the next frame.
    pub async fn decision(&self, record: DecisionRecord) -> Result<DecisionId, AuditError> {
        let (id, ticket) = self.recorder.decision_in(Some(self), record).await?;
        self.decided.fetch_max(ticket, Ordering::Relaxed);
        Ok(id)
    }

    pub async fn frame(&self, frame: Frame) {
        let seq = self.next_frame.fetch_add(1, Ordering::Relaxed);
        self.send(Write::Frame {
            session: self.id,
            seq,
            frame: FrameRecord {
                time_ns: time::now_ns(),
                frame,
            },
        })
        .await;
    }

    /// The response to `decision` is complete.
    pub async fn result(&self, decision: DecisionId, rows: u64, masks: BTreeMap<String, u64>) {
        self.send(Write::Result {
            decision,
            rows,
            masks,
        })
        .await;
    }

    pub async fn end(&self, bytes_up: u64, bytes_down: u64, error: Option<String>) {
        self.send(Write::SessionEnd {
            id: self.id,
            time_ns: time::now_ns(),
            bytes_up,
            bytes_down,
            error,
        })
        .await;
    }

    /// A recorder for one response's rows, capped by `[audit]`
    /// record_rows / record_bytes.
    pub fn result_recorder(&self, decision: DecisionId) -> ResultRecorder {
        let (rows, bytes) = self
            .recorder
            .inner
            .as_ref()
            .map_or((0, 0), |i| (i.record_rows, i.record_bytes));
        ResultRecorder::new(self.clone(), decision, rows, bytes)
    }
}
