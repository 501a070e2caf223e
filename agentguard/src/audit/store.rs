//! The redb file: tables, the batch write, queries, retention.
//!
//! Decisions are keyed by (time ns, seq) so a time range is a key range;
//! each filter the CLI offers has an index table keyed (value, time, seq) →
//! (), so `--agent X --since 1h --limit 50` reads ~50 index entries however
//! large the log is. Frames are keyed (session id, seq): a replay is one
//! range scan.
//!
//! The file is opened in redb's `MultiWriter` mode by every writer (the
//! daemon, an `exec` guard) and read-only in the same mode by the CLI, so
//! any number of them share it while it is live; one write transaction runs
//! at a time.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use redb::{
    ConcurrencyMode, Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase as _,
    ReadableTable, ReadableTableMetadata as _, TableDefinition, WriteTransaction,
};

use super::{
    AuditError,
    record::{DecisionId, DecisionRecord, Frame, FrameRecord, SessionRecord, action_str},
};
use crate::decide::Action;

pub const FILE_NAME: &str = "agentguard.redb";

type Key = (u64, u64);
const DECISIONS: TableDefinition<Key, &[u8]> = TableDefinition::new("decisions");
const BY_AGENT: TableDefinition<(&str, u64, u64), ()> = TableDefinition::new("decisions_by_agent");
const BY_TARGET: TableDefinition<(&str, u64, u64), ()> =
    TableDefinition::new("decisions_by_target");
const BY_ACTION: TableDefinition<(&str, u64, u64), ()> =
    TableDefinition::new("decisions_by_action");
const BY_UID: TableDefinition<(u32, u64, u64), ()> = TableDefinition::new("decisions_by_uid");
const SESSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("sessions");
const FRAMES: TableDefinition<Key, &[u8]> = TableDefinition::new("frames");
/// Journal id → the last journal entry whose writes are all committed
/// (journal.rs): set in the same transaction as those writes.
const JOURNALS: TableDefinition<&str, u64> = TableDefinition::new("journals");

/// One unit of work for the writer. The record variants are also what
/// the journal holds (serde); the control ones are never journaled.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum Write {
    Decision {
        record: Box<DecisionRecord>,
        /// Where its `Request` frame goes in the session's recording.
        frame_seq: Option<u64>,
    },
    SessionStart(Box<SessionRecord>),
    SessionDetails {
        id: u64,
        details: BTreeMap<String, String>,
    },
    Frame {
        session: u64,
        seq: u64,
        frame: FrameRecord,
    },
    /// The response to a decision is complete: what was masked, how many rows.
    Result {
        decision: DecisionId,
        rows: u64,
        masks: BTreeMap<String, u64>,
    },
    SessionEnd {
        id: u64,
        time_ns: u64,
        bytes_up: u64,
        bytes_down: u64,
        error: Option<String>,
    },
    /// Answered once everything before it is committed.
    #[serde(skip)]
    Flush(tokio::sync::oneshot::Sender<()>),
    /// Commit what is queued and stop.
    #[serde(skip)]
    Close,
    /// Journal entry `seq` of journal `id` is complete once this commits.
    #[serde(skip)]
    JournalMark {
        id: std::sync::Arc<str>,
        seq: u64,
    },
    /// Tests: the writer waits until this is signalled (to fill the queue).
    #[cfg(test)]
    #[serde(skip)]
    Stall(std::sync::mpsc::Receiver<()>),
}

impl Write {
    /// Whether this is a record (not a control message).
    pub fn is_record(&self) -> bool {
        match self {
            Self::Flush(_) | Self::Close | Self::JournalMark { .. } => false,
            #[cfg(test)]
            Self::Stall(_) => false,
            _ => true,
        }
    }
}

pub struct Store {
    /// None only between a failed reopen and the next attempt.
    db: Option<Database>,
    path: PathBuf,
}

fn builder() -> redb::Builder {
    let mut b = redb::Builder::new();
    b.set_concurrency_mode(ConcurrencyMode::MultiWriter);
    // Appends and short scans: a small cache is plenty, and the daemon
    // should not grow to redb's 1 GiB default.
    b.set_cache_size(32 << 20);
    b
}

impl Store {
    /// Opens (creating) `<dir>/agentguard.redb`.
    pub fn open(dir: &Path) -> Result<Self, AuditError> {
        std::fs::create_dir_all(dir).map_err(|source| AuditError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let db = builder()
            .create(&path)
            .map_err(|e| AuditError::open(&path, e))?;
        let store = Self { db: Some(db), path };
        // Every table exists from the start, so readers never meet a
        // missing one.
        let txn = store.db()?.begin_write()?;
        {
            txn.open_table(DECISIONS)?;
            txn.open_table(BY_AGENT)?;
            txn.open_table(BY_TARGET)?;
            txn.open_table(BY_ACTION)?;
            txn.open_table(BY_UID)?;
            txn.open_table(SESSIONS)?;
            txn.open_table(FRAMES)?;
            txn.open_table(JOURNALS)?;
        }
        txn.commit()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db(&self) -> Result<&Database, AuditError> {
        self.db.as_ref().ok_or_else(|| AuditError::Open {
            path: self.path.clone(),
            message: "closed after an I/O error, not reopened yet".into(),
        })
    }

    /// redb fails every call after an I/O error (a full disk, say) until the
    /// file is opened again; opening it also repairs what the failed commit
    /// left. The old handle goes first: it still holds its file locks.
    pub fn reopen(&mut self) -> Result<(), AuditError> {
        self.db = None;
        self.db = Some(
            builder()
                .create(&self.path)
                .map_err(|e| AuditError::open(&self.path, e))?,
        );
        Ok(())
    }

    pub fn file_len(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// Writes a batch in one transaction (one fsync).
    pub fn apply(&self, batch: &[Write]) -> Result<(), AuditError> {
        let txn = self.db()?.begin_write()?;
        let mut sessions: HashMap<u64, Option<SessionRecord>> = HashMap::new();
        {
            let mut t = Tables::open(&txn)?;
            let mut session_table = txn.open_table(SESSIONS)?;
            let mut journals = txn.open_table(JOURNALS)?;
            let session = |sessions: &mut HashMap<u64, Option<SessionRecord>>,
                           id: u64,
                           f: &mut dyn FnMut(&mut SessionRecord)|
             -> Result<(), AuditError> {
                let entry = match sessions.entry(id) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        let found = session_table
                            .get(id)?
                            .and_then(|g| serde_json::from_slice(g.value()).ok());
                        v.insert(found)
                    }
                };
                if let Some(s) = entry {
                    f(s);
                }
                Ok(())
            };
            // A reply's result usually arrives in the batch of its decision:
            // folded into the record before it is encoded, instead of read
            // back, decoded, changed and encoded again.
            let in_batch: HashMap<(u64, u64), Option<u64>> = batch
                .iter()
                .filter_map(|w| match w {
                    Write::Decision { record, .. } => record
                        .id
                        .map(|id| ((id.time_ns, id.seq), record.session_id)),
                    _ => None,
                })
                .collect();
            let mut folded: HashMap<(u64, u64), (u64, BTreeMap<String, u64>)> = HashMap::new();
            for w in batch {
                if let Write::Result {
                    decision,
                    rows,
                    masks,
                } = w
                {
                    let key = (decision.time_ns, decision.seq);
                    if in_batch.contains_key(&key) {
                        let (r, m) = folded.entry(key).or_default();
                        *r += rows;
                        for (k, v) in masks {
                            *m.entry(k.clone()).or_default() += v;
                        }
                    }
                }
            }
            for w in batch {
                match w {
                    Write::Decision { record, frame_seq } => {
                        let Some(id) = record.id else { continue };
                        match folded.get(&(id.time_ns, id.seq)) {
                            Some((rows, masks)) => {
                                let mut rec = (**record).clone();
                                rec.rows = Some(rec.rows.unwrap_or(0) + rows);
                                for (k, v) in masks {
                                    *rec.masks.entry(k.clone()).or_default() += v;
                                }
                                t.insert_decision(id, &rec)?;
                            }
                            None => t.insert_decision(id, record.as_ref())?,
                        }
                        if let Some(sid) = record.session_id {
                            if let Some(seq) = frame_seq {
                                let frame = FrameRecord {
                                    time_ns: record.time_ns,
                                    frame: Frame::Request {
                                        decision: id,
                                        request: record.request.clone(),
                                        action: record.action,
                                        reason: record.reason.clone(),
                                    },
                                };
                                t.frames.insert((sid, *seq), json(&frame)?.as_slice())?;
                            }
                            let connect = record.request.kind() == "connect";
                            session(&mut sessions, sid, &mut |s| {
                                s.last_ns = s.last_ns.max(record.time_ns);
                                if connect {
                                    return;
                                }
                                s.counts.requests += 1;
                                match record.action {
                                    Action::Allow => s.counts.allowed += 1,
                                    Action::Deny | Action::Approve => s.counts.denied += 1,
                                }
                            })?;
                        }
                    }
                    Write::SessionStart(rec) => {
                        sessions.insert(rec.id, Some((**rec).clone()));
                    }
                    Write::SessionDetails { id, details } => {
                        session(&mut sessions, *id, &mut |s| {
                            s.details.extend(details.clone())
                        })?;
                    }
                    Write::Frame {
                        session: sid,
                        seq,
                        frame,
                    } => {
                        t.frames.insert((*sid, *seq), json(frame)?.as_slice())?;
                        session(&mut sessions, *sid, &mut |s| {
                            s.last_ns = s.last_ns.max(frame.time_ns)
                        })?;
                    }
                    Write::Result {
                        decision,
                        rows,
                        masks,
                    } => {
                        let key = (decision.time_ns, decision.seq);
                        if let Some(sid) = in_batch.get(&key) {
                            // The record already holds it; the session's
                            // counts are updated here all the same.
                            let masked: u64 = masks.values().sum();
                            if let Some(sid) = *sid {
                                session(&mut sessions, sid, &mut |s| {
                                    s.counts.rows += rows;
                                    s.counts.masked += masked;
                                })?;
                            }
                            continue;
                        }
                        let found: Option<DecisionRecord> = t
                            .decisions
                            .get(key)?
                            .and_then(|g| serde_json::from_slice(g.value()).ok());
                        let Some(mut rec) = found else { continue };
                        rec.rows = Some(rec.rows.unwrap_or(0) + rows);
                        for (k, v) in masks {
                            *rec.masks.entry(k.clone()).or_default() += v;
                        }
                        t.decisions.insert(key, json(&rec)?.as_slice())?;
                        if let Some(sid) = rec.session_id {
                            let masked: u64 = masks.values().sum();
                            session(&mut sessions, sid, &mut |s| {
                                s.counts.rows += rows;
                                s.counts.masked += masked;
                            })?;
                        }
                    }
                    Write::Flush(_) | Write::Close => {}
                    Write::JournalMark { id, seq } => {
                        journals.insert(&**id, seq)?;
                    }
                    #[cfg(test)]
                    Write::Stall(_) => {}
                    Write::SessionEnd {
                        id,
                        time_ns,
                        bytes_up,
                        bytes_down,
                        error,
                    } => {
                        session(&mut sessions, *id, &mut |s| {
                            s.end_ns = Some(*time_ns);
                            s.last_ns = s.last_ns.max(*time_ns);
                            s.counts.bytes_up += bytes_up;
                            s.counts.bytes_down += bytes_down;
                            s.error.clone_from(error);
                        })?;
                    }
                }
            }
            for s in sessions.values().flatten() {
                session_table.insert(s.id, json(s)?.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The last complete entry of journal `id` already committed (0: none).
    pub fn journal_mark(&self, id: &str) -> Result<u64, AuditError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(JOURNALS)?;
        Ok(table.get(id)?.map_or(0, |g| g.value()))
    }

    /// Forgets a journal whose files are gone.
    pub fn forget_journal(&self, id: &str) -> Result<(), AuditError> {
        let txn = self.db()?.begin_write()?;
        txn.open_table(JOURNALS)?.remove(id)?;
        txn.commit()?;
        Ok(())
    }

    /// Deletes up to `max` decisions older than `cutoff_ns` and up to
    /// `max / 16` sessions (with their frames) idle since before it.
    /// Returns how many records went, and whether more are due.
    pub fn expire(&self, cutoff_ns: u64, max: usize) -> Result<(usize, bool), AuditError> {
        let txn = self.db()?.begin_write()?;
        let (n, more) = {
            let mut t = Tables::open(&txn)?;
            let (d, more_d) = t.pop_decisions(max, |k| k.0 < cutoff_ns)?;
            let mut sessions = txn.open_table(SESSIONS)?;
            let (s, more_s) = pop_sessions(&mut sessions, &mut t.frames, max / 16 + 1, |s| {
                s.last_ns < cutoff_ns
            })?;
            (d + s, more_d || more_s)
        };
        txn.commit()?;
        Ok((n, more))
    }

    /// Deletes the oldest `fraction` of decisions and of sessions.
    /// Deletes up to `decisions` of the oldest decisions and `sessions` of
    /// the oldest sessions (with their frames), in one short transaction.
    pub fn trim_oldest(&self, decisions: usize, sessions: usize) -> Result<usize, AuditError> {
        let txn = self.db()?.begin_write()?;
        let n = {
            let mut t = Tables::open(&txn)?;
            let mut s = txn.open_table(SESSIONS)?;
            let (d, _) = t.pop_decisions(decisions, |_| true)?;
            let (s, _) = pop_sessions(&mut s, &mut t.frames, sessions, |_| true)?;
            d + s
        };
        txn.commit()?;
        Ok(n)
    }

    /// How many decisions and sessions the log holds.
    pub fn lens(&self) -> Result<(u64, u64), AuditError> {
        let txn = self.db()?.begin_read()?;
        Ok((
            txn.open_table(DECISIONS)?.len()?,
            txn.open_table(SESSIONS)?.len()?,
        ))
    }

    /// Bytes in allocated pages (the file may be longer: it grows in steps,
    /// and pages freed by deletions are reused before it grows again).
    /// Pages a commit freed count until a later commit releases them.
    pub fn used_bytes(&self) -> Result<u64, AuditError> {
        let txn = self.db()?.begin_write()?;
        let stats = txn.stats()?;
        txn.abort()?;
        Ok(stats.allocated_pages() * stats.page_size() as u64)
    }

    /// Gives free space back to the file system. Fails (harmlessly) while a
    /// reader in another process is mid-transaction. Rewrites the whole
    /// file: only before the log serves anyone.
    pub fn compact(&mut self) -> Result<bool, AuditError> {
        let Some(db) = self.db.as_mut() else {
            return Ok(false);
        };
        db.compact().map_err(|e| AuditError::Db(e.into()))
    }
}

fn json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, AuditError> {
    serde_json::to_vec(v).map_err(AuditError::Encode)
}

struct Tables<'t> {
    decisions: redb::Table<'t, Key, &'static [u8]>,
    by_agent: redb::Table<'t, (&'static str, u64, u64), ()>,
    by_target: redb::Table<'t, (&'static str, u64, u64), ()>,
    by_action: redb::Table<'t, (&'static str, u64, u64), ()>,
    by_uid: redb::Table<'t, (u32, u64, u64), ()>,
    frames: redb::Table<'t, Key, &'static [u8]>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, AuditError> {
        Ok(Self {
            decisions: txn.open_table(DECISIONS)?,
            by_agent: txn.open_table(BY_AGENT)?,
            by_target: txn.open_table(BY_TARGET)?,
            by_action: txn.open_table(BY_ACTION)?,
            by_uid: txn.open_table(BY_UID)?,
            frames: txn.open_table(FRAMES)?,
        })
    }

    fn insert_decision(&mut self, id: DecisionId, rec: &DecisionRecord) -> Result<(), AuditError> {
        let (t, s) = (id.time_ns, id.seq);
        self.decisions.insert((t, s), json(rec)?.as_slice())?;
        self.index(rec, t, s, true)
    }

    fn index(
        &mut self,
        rec: &DecisionRecord,
        t: u64,
        s: u64,
        insert: bool,
    ) -> Result<(), AuditError> {
        let agent = rec.agent().unwrap_or("");
        let action = action_str(rec.action);
        let targets = rec.target_keys();
        if insert {
            self.by_agent.insert((agent, t, s), ())?;
            self.by_action.insert((action, t, s), ())?;
            for k in &targets {
                self.by_target.insert((k.as_str(), t, s), ())?;
            }
            if let Some(id) = &rec.identity {
                self.by_uid.insert((id.uid, t, s), ())?;
            }
        } else {
            self.by_agent.remove((agent, t, s))?;
            self.by_action.remove((action, t, s))?;
            for k in &targets {
                self.by_target.remove((k.as_str(), t, s))?;
            }
            if let Some(id) = &rec.identity {
                self.by_uid.remove((id.uid, t, s))?;
            }
        }
        Ok(())
    }

    /// Removes up to `max` oldest decisions while `keep_going(key)`.
    fn pop_decisions(
        &mut self,
        max: usize,
        keep_going: impl Fn(Key) -> bool,
    ) -> Result<(usize, bool), AuditError> {
        let mut n = 0;
        while n < max {
            let Some((key, rec)) = ({
                let first = self.decisions.first()?;
                first.and_then(|(k, v)| {
                    let key = k.value();
                    keep_going(key).then(|| {
                        (
                            key,
                            serde_json::from_slice::<DecisionRecord>(v.value()).ok(),
                        )
                    })
                })
            }) else {
                return Ok((n, false));
            };
            self.decisions.remove(key)?;
            if let Some(rec) = rec {
                self.index(&rec, key.0, key.1, false)?;
            }
            n += 1;
        }
        Ok((n, true))
    }
}

fn pop_sessions(
    sessions: &mut redb::Table<'_, u64, &'static [u8]>,
    frames: &mut redb::Table<'_, Key, &'static [u8]>,
    max: usize,
    expired: impl Fn(&SessionRecord) -> bool,
) -> Result<(usize, bool), AuditError> {
    // Sessions are keyed by start time; one that started long ago may still
    // be live, so look a little past the first survivor.
    let mut doomed = Vec::new();
    let mut scanned = 0;
    for entry in sessions.range::<u64>(..)? {
        let (k, v) = entry?;
        scanned += 1;
        let rec: Option<SessionRecord> = serde_json::from_slice(v.value()).ok();
        if rec.as_ref().is_none_or(&expired) {
            doomed.push(k.value());
            if doomed.len() >= max {
                break;
            }
        } else if scanned > max * 4 {
            break;
        }
    }
    let more = doomed.len() >= max;
    for id in &doomed {
        sessions.remove(*id)?;
        frames.retain_in((*id, 0)..=(*id, u64::MAX), |_, _| false)?;
    }
    Ok((doomed.len(), more))
}

/// What `agentguard audit` and `sessions` ask for.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub agent: Option<String>,
    pub uid: Option<u32>,
    pub target: Option<String>,
    pub action: Option<String>,
    pub since_ns: Option<u64>,
    pub until_ns: Option<u64>,
}

impl Filter {
    fn time_range(&self) -> (u64, u64) {
        (
            self.since_ns.unwrap_or(0),
            self.until_ns.unwrap_or(u64::MAX),
        )
    }

    pub fn matches(&self, rec: &DecisionRecord) -> bool {
        let (lo, hi) = self.time_range();
        (lo..=hi).contains(&rec.time_ns)
            && self.agent.as_deref().is_none_or(|a| rec.agent() == Some(a))
            && self
                .uid
                .is_none_or(|u| rec.identity.as_ref().is_some_and(|i| i.uid == u))
            && self
                .target
                .as_deref()
                .is_none_or(|t| rec.target_keys().iter().any(|k| k == t))
            && self
                .action
                .as_deref()
                .is_none_or(|a| action_str(rec.action) == a)
    }

    pub fn matches_session(&self, s: &SessionRecord) -> bool {
        let (lo, hi) = self.time_range();
        let end = s.end_ns.unwrap_or(s.last_ns);
        let ident = s.identity.as_ref();
        end >= lo
            && s.start_ns <= hi
            && self
                .agent
                .as_deref()
                .is_none_or(|a| ident.and_then(|i| i.agent.as_deref()) == Some(a))
            && self.uid.is_none_or(|u| ident.is_some_and(|i| i.uid == u))
            && self.target.as_deref().is_none_or(|t| {
                s.target.as_ref().is_some_and(|x| {
                    x.name.as_deref() == Some(t) || super::record::target_addr(x) == t
                })
            })
    }
}

/// A read-only view of the file, for the CLI (works beside live writers).
pub struct Reader {
    db: ReadOnlyDatabase,
}

impl Reader {
    pub fn open(dir: &Path) -> Result<Self, AuditError> {
        let path = dir.join(FILE_NAME);
        if !path.exists() {
            return Err(AuditError::NoDatabase(path));
        }
        match builder().open_read_only(&path) {
            Ok(db) => Ok(Self { db }),
            // Left unclean by a writer that was killed, and no writer has
            // opened it since: a read-write open repairs it.
            Err(redb::DatabaseError::RepairAborted) => {
                drop(
                    builder()
                        .open(&path)
                        .map_err(|e| AuditError::open(&path, e))?,
                );
                let db = builder()
                    .open_read_only(&path)
                    .map_err(|e| AuditError::open(&path, e))?;
                Ok(Self { db })
            }
            Err(e) => Err(AuditError::open(&path, e)),
        }
    }

    fn txn(&self) -> Result<ReadTransaction, AuditError> {
        Ok(self.db.begin_read()?)
    }

    /// Waits (at most `limit`) until what live writers have journaled is
    /// committed, so a query sees every request answered before it ran:
    /// replies wait for the journal, the database follows within ~50 ms.
    pub fn catch_up(&self, dir: &Path, limit: std::time::Duration) {
        let tails = super::journal::live_tails(&dir.join(super::journal::DIR_NAME));
        let deadline = std::time::Instant::now() + limit;
        for (id, seq) in tails {
            while std::time::Instant::now() < deadline {
                let mark = self
                    .txn()
                    .and_then(|t| Ok(t.open_table(JOURNALS)?.get(id.as_str())?.map(|g| g.value())));
                match mark {
                    Ok(Some(m)) if m >= seq => break,
                    Err(_) => break,
                    _ => {}
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }

    /// The newest `limit` decisions matching `filter`, oldest first.
    pub fn decisions(
        &self,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<DecisionRecord>, AuditError> {
        let txn = self.txn()?;
        let decisions = txn.open_table(DECISIONS)?;
        let (lo, hi) = filter.time_range();
        let mut out = Vec::new();
        let mut take = |key: Key| -> Result<bool, AuditError> {
            if let Some(v) = decisions.get(key)?
                && let Ok(rec) = serde_json::from_slice::<DecisionRecord>(v.value())
                && filter.matches(&rec)
            {
                out.push(rec);
            }
            Ok(out.len() < limit)
        };
        // The most selective index first; the other filters are checked on
        // the records it yields.
        macro_rules! scan {
            ($table:expr, $v:expr) => {{
                let table = txn.open_table($table)?;
                for e in table.range(($v, lo, 0)..=($v, hi, u64::MAX))?.rev() {
                    let key = e.map(|(k, _)| {
                        let k = k.value();
                        (k.1, k.2)
                    })?;
                    if !take(key)? {
                        break;
                    }
                }
            }};
        }
        if let Some(a) = filter.agent.as_deref() {
            scan!(BY_AGENT, a);
        } else if let Some(t) = filter.target.as_deref() {
            scan!(BY_TARGET, t);
        } else if let Some(u) = filter.uid {
            scan!(BY_UID, u);
        } else if let Some(a) = filter.action.as_deref() {
            scan!(BY_ACTION, a);
        } else {
            for e in decisions.range((lo, 0)..=(hi, u64::MAX))?.rev() {
                let (k, _) = e?;
                if !take(k.value())? {
                    break;
                }
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Decisions after `after` (exclusive) matching `filter`, oldest first:
    /// what follow mode prints next.
    pub fn decisions_after(
        &self,
        after: Option<DecisionId>,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<DecisionRecord>, AuditError> {
        let txn = self.txn()?;
        let decisions = txn.open_table(DECISIONS)?;
        let start = after.map_or((0, 0), |a| (a.time_ns, a.seq));
        let mut out = Vec::new();
        for e in decisions.range(start..)? {
            let (k, v) = e?;
            if Some(k.value()) == after.map(|a| (a.time_ns, a.seq)) {
                continue;
            }
            if let Ok(rec) = serde_json::from_slice::<DecisionRecord>(v.value())
                && filter.matches(&rec)
            {
                out.push(rec);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The newest key, so follow mode starts after what is there.
    pub fn last_decision(&self) -> Result<Option<DecisionId>, AuditError> {
        let txn = self.txn()?;
        let decisions = txn.open_table(DECISIONS)?;
        Ok(decisions.last()?.map(|(k, _)| {
            let (time_ns, seq) = k.value();
            DecisionId { time_ns, seq }
        }))
    }

    /// The newest `limit` sessions matching `filter`, oldest first.
    pub fn sessions(
        &self,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<SessionRecord>, AuditError> {
        let txn = self.txn()?;
        let sessions = txn.open_table(SESSIONS)?;
        let mut out = Vec::new();
        for e in sessions.range::<u64>(..)?.rev() {
            let (_, v) = e?;
            if let Ok(s) = serde_json::from_slice::<SessionRecord>(v.value())
                && filter.matches_session(&s)
            {
                out.push(s);
                if out.len() >= limit {
                    break;
                }
            }
        }
        out.reverse();
        Ok(out)
    }

    pub fn session(&self, id: u64) -> Result<Option<SessionRecord>, AuditError> {
        let txn = self.txn()?;
        let sessions = txn.open_table(SESSIONS)?;
        Ok(sessions
            .get(id)?
            .and_then(|v| serde_json::from_slice(v.value()).ok()))
    }

    pub fn frames(&self, session: u64) -> Result<Vec<FrameRecord>, AuditError> {
        let txn = self.txn()?;
        let frames = txn.open_table(FRAMES)?;
        let mut out = Vec::new();
        for e in frames.range((session, 0)..=(session, u64::MAX))? {
            let (_, v) = e?;
            match serde_json::from_slice(v.value()) {
                Ok(f) => out.push(f),
                Err(e) => return Err(AuditError::Decode(e)),
            }
        }
        Ok(out)
    }

    pub fn counts(&self) -> Result<(u64, u64, u64), AuditError> {
        let txn = self.txn()?;
        Ok((
            txn.open_table(DECISIONS)?.len()?,
            txn.open_table(SESSIONS)?.len()?,
            txn.open_table(FRAMES)?.len()?,
        ))
    }
}
