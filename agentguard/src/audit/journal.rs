//! Crash safety without an fsync per reply.
//!
//! A reply waits until its decision record survives the daemon being
//! killed. A redb commit gives that, but costs two fsyncs (milliseconds); a
//! `write(2)` into this journal gives it too (the bytes are in the kernel's
//! page cache, which outlives the process) for microseconds. So every
//! record is appended here as it is queued, on the task that makes it
//! (no thread to wake and wait for: its reply may go at once), and the
//! committer commits to redb at its own pace (batched, fsynced) together
//! with a mark saying which journal entries are now in the database.
//!
//! What is not covered: a power loss or kernel crash before the next redb
//! commit (at most `LINGER`, 50 ms, later) loses the entries still only in
//! the page cache. That is the trade `commit_before_reply` documents.
//!
//! Each writing process (the daemon, an `exec` guard) has its own journal
//! `<id>.lock` (an flock held while it lives) and `<id>.<n>.journal`
//! segments. Whoever opens the audit log next and can take the lock of a
//! journal left behind replays the entries past its mark, then deletes it.
//! Entries are `len (u32 LE) · crc32 (u32 LE) · JSON`; a torn last entry
//! (killed mid-write) fails its check and is where reading stops.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Write as _},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::Deserialize;
use tracing::{info, warn};

use super::{
    AuditError,
    store::{Store, Write},
};

pub const DIR_NAME: &str = "audit-journal";
/// A segment is closed past this size; segments fully committed are deleted.
const SEGMENT_BYTES: u64 = 8 << 20;
/// An entry longer than this is corrupt, not big.
const MAX_ENTRY: u32 = 1 << 30;

/// A record's JSON, made before the journal's lock is taken.
pub struct Encoded(Vec<u8>);

pub fn encode(w: &Write) -> io::Result<Encoded> {
    Ok(Encoded(serde_json::to_vec(w)?))
}

#[derive(Deserialize)]
struct Entry {
    seq: u64,
    writes: Vec<Write>,
}

/// An entry's sequence number alone (the writes are skipped unparsed).
#[derive(Deserialize)]
struct EntrySeq {
    seq: u64,
}

pub struct Journal {
    dir: PathBuf,
    id: Arc<str>,
    /// Holds the flock: the journal is live while this is open.
    _lock: File,
    file: File,
    segment: u32,
    segment_bytes: u64,
    /// Closed segments and their last entry, oldest first.
    closed: Vec<(u32, u64)>,
    seq: u64,
}

impl Journal {
    /// A new journal for this process under `dir`.
    pub fn create(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let id: Arc<str> = format!("{}-{nanos}", std::process::id()).into();
        let lock = File::create(dir.join(format!("{id}.lock")))?;
        if !try_lock(&lock)? {
            return Err(io::Error::other(format!("journal {id} is locked")));
        }
        let file = open_segment(dir, &id, 0)?;
        Ok(Self {
            dir: dir.to_owned(),
            id,
            _lock: lock,
            file,
            segment: 0,
            segment_bytes: 0,
            closed: Vec::new(),
            seq: 0,
        })
    }

    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// The last entry appended (0: none).
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// Appends one record, encoded by [`encode`], as the next entry;
    /// returns its sequence number.
    pub fn append(&mut self, encoded: &Encoded) -> io::Result<u64> {
        let seq = self.seq + 1;
        // `{"seq":N,"writes":[…]}`, as `Entry` reads it back.
        let mut buf = Vec::with_capacity(encoded.0.len() + 40);
        buf.extend_from_slice(&[0u8; 8]);
        buf.extend_from_slice(b"{\"seq\":");
        buf.extend_from_slice(seq.to_string().as_bytes());
        buf.extend_from_slice(b",\"writes\":[");
        buf.extend_from_slice(&encoded.0);
        buf.extend_from_slice(b"]}");
        let len = u32::try_from(buf.len() - 8)
            .ok()
            .filter(|&n| n < MAX_ENTRY)
            .ok_or_else(|| io::Error::other("journal entry too large"))?;
        let crc = crc32fast::hash(&buf[8..]);
        buf[0..4].copy_from_slice(&len.to_le_bytes());
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        self.file.write_all(&buf)?;
        self.seq = seq;
        self.segment_bytes += buf.len() as u64;
        if self.segment_bytes >= SEGMENT_BYTES {
            self.closed.push((self.segment, seq));
            self.segment += 1;
            self.file = open_segment(&self.dir, &self.id, self.segment)?;
            self.segment_bytes = 0;
        }
        Ok(seq)
    }

    /// Deletes the closed segments whose entries are all in the database.
    pub fn committed(&mut self, mark: u64) {
        while let Some(&(n, last)) = self.closed.first() {
            if last > mark {
                break;
            }
            let _ = fs::remove_file(segment_path(&self.dir, &self.id, n));
            self.closed.remove(0);
        }
    }

    /// A clean stop with everything committed: the journal goes.
    pub fn remove(self, store: &Store) {
        for n in self.closed.iter().map(|&(n, _)| n).chain([self.segment]) {
            let _ = fs::remove_file(segment_path(&self.dir, &self.id, n));
        }
        let _ = store.forget_journal(&self.id);
        let _ = fs::remove_file(self.dir.join(format!("{}.lock", self.id)));
    }
}

fn segment_path(dir: &Path, id: &str, n: u32) -> PathBuf {
    dir.join(format!("{id}.{n:06}.journal"))
}

fn open_segment(dir: &Path, id: &str, n: u32) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, id, n))
}

/// Takes the exclusive flock without waiting; false when someone holds it.
fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock(2) on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Replays every journal under `dir` whose writer is gone: the entries past
/// its mark go into the database (each with its mark, so a crash during
/// recovery repeats nothing), then its files are deleted. Returns how many
/// entries were replayed.
pub fn recover(dir: &Path, store: &Store) -> Result<u64, AuditError> {
    let Ok(listing) = fs::read_dir(dir) else {
        return Ok(0);
    };
    let mut replayed = 0;
    for entry in listing.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".lock")) else {
            continue;
        };
        let lock = match File::open(entry.path()) {
            Ok(f) => f,
            Err(e) => {
                warn!("audit journal {id}: cannot open its lock: {e}");
                continue;
            }
        };
        match try_lock(&lock) {
            Ok(true) => {}
            // Its writer is alive.
            Ok(false) => continue,
            Err(e) => {
                warn!("audit journal {id}: cannot lock: {e}");
                continue;
            }
        }
        let n = replay(dir, id, store)?;
        if n > 0 {
            info!(
                journal = id,
                entries = n,
                "audit: replayed records a stopped writer had journaled but not committed"
            );
        }
        replayed += n;
        store.forget_journal(id)?;
        let _ = fs::remove_file(entry.path());
    }
    Ok(replayed)
}

/// Writes per replay transaction.
const REPLAY_BATCH: usize = 2048;

fn replay(dir: &Path, id: &str, store: &Store) -> Result<u64, AuditError> {
    let mark = store.journal_mark(id)?;
    let prefix = format!("{id}.");
    let mut segments: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|source| AuditError::Dir {
            path: dir.to_owned(),
            source,
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".journal"))
        })
        .collect();
    // Zero-padded segment numbers: name order is segment order.
    segments.sort();
    let id: Arc<str> = id.into();
    let mut replayed = 0;
    // Many entries per transaction, the mark last in each: a crash in the
    // middle of one leaves the mark before it, so it is replayed again. One
    // transaction per entry made a restart after a kill under load take
    // longer than a supervisor waits.
    let mut batch: Vec<Write> = Vec::new();
    let mut last = mark;
    let flush = |batch: &mut Vec<Write>, seq: u64| -> Result<(), AuditError> {
        if batch.is_empty() {
            return Ok(());
        }
        batch.push(Write::JournalMark {
            id: Arc::clone(&id),
            seq,
        });
        store.apply(batch)?;
        batch.clear();
        Ok(())
    };
    for path in &segments {
        let mut bytes = Vec::new();
        if let Err(e) = File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)) {
            warn!("audit journal {}: unreadable: {e}", path.display());
            continue;
        }
        let mut rest = &bytes[..];
        while let Some((body, after)) = next_frame(rest) {
            rest = after;
            let Ok(entry) = serde_json::from_slice::<Entry>(body) else {
                warn!(
                    "audit journal {}: an entry does not decode; skipped",
                    path.display()
                );
                continue;
            };
            if entry.seq <= mark {
                continue;
            }
            batch.extend(entry.writes);
            last = entry.seq;
            replayed += 1;
            if batch.len() >= REPLAY_BATCH {
                flush(&mut batch, last)?;
            }
        }
        flush(&mut batch, last)?;
        if !rest.is_empty() {
            warn!(
                "audit journal {}: {} bytes of a torn last entry ignored",
                path.display(),
                rest.len()
            );
        }
    }
    for path in segments {
        let _ = fs::remove_file(path);
    }
    Ok(replayed)
}

/// The journals whose writer is alive, each with its last complete entry:
/// what a reader waits to see committed before it answers (`catch_up`).
pub fn live_tails(dir: &Path) -> Vec<(String, u64)> {
    let Ok(listing) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let names: Vec<String> = listing
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    let mut tails = Vec::new();
    for id in names.iter().filter_map(|n| n.strip_suffix(".lock")) {
        let alive = File::open(dir.join(format!("{id}.lock")))
            .and_then(|f| try_lock(&f))
            .is_ok_and(|locked| !locked);
        if !alive {
            continue;
        }
        let prefix = format!("{id}.");
        let Some(last) = names
            .iter()
            .filter(|n| n.starts_with(&prefix) && n.ends_with(".journal"))
            .max()
        else {
            continue;
        };
        let Ok(bytes) = fs::read(dir.join(last)) else {
            continue;
        };
        // Only the last entry is decoded: the others are skipped by length.
        let mut rest = &bytes[..];
        let mut last = None;
        while let Some((body, after)) = next_frame(rest) {
            last = Some(body);
            rest = after;
        }
        if let Some(entry) = last.and_then(|b| serde_json::from_slice::<EntrySeq>(b).ok()) {
            tails.push((id.to_owned(), entry.seq));
        }
    }
    tails
}

/// The next entry's JSON and what follows; None at the end or at a torn or
/// corrupt frame.
fn next_frame(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?);
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    // Zero length: zero-filled space after a power loss, not an entry.
    if len == 0 || len >= MAX_ENTRY {
        return None;
    }
    let body = bytes.get(8..8 + len as usize)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    Some((body, &bytes[8 + len as usize..]))
}
