//! Decision cache for `connect` requests (L4, every TCP connection).
//!
//! Key: (bundle, agent, uid, exe, cgroup id, target ip, port, name,
//! protocol, host, labels). Everything else in the input (pid, comm,
//! cmdline, gid, the clock) is not in the key, so a bundle whose rules look
//! at any of it, or call an impure builtin, is not cached at all: the bundle
//! text is scanned at load ([`uncacheable`]). `sql`/`http`/… decisions are
//! never cached.
//!
//! Bounded: 16 shards, each two generations of at most 128 entries. A full
//! current generation becomes the previous one (dropping the old previous);
//! a hit in the previous generation moves the entry back. So at most 4096
//! entries are kept and recently used ones survive (an approximate LRU
//! without per-hit bookkeeping). Only successful evaluations are stored: a
//! timeout or an evaluation error is never replayed.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::Mutex,
};

use super::bundle::SourceFile;
use crate::decide::{Decision, Input, Request};

const SHARDS: usize = 16;
/// Entries per shard generation; 16 × 2 × 128 = [`CAPACITY`].
const GENERATION: usize = 128;
/// Most entries the cache holds.
pub const CAPACITY: usize = SHARDS * 2 * GENERATION;

/// The cached fields, owned.
struct Key {
    bundle: u64,
    agent: Option<String>,
    uid: u32,
    exe: Option<String>,
    cgroup_id: u64,
    ip: String,
    port: u16,
    name: Option<String>,
    protocol: u8,
    host: Option<String>,
    labels: Vec<String>,
}

impl Key {
    fn of(bundle: u64, input: &Input) -> Self {
        let (i, t) = (&input.identity, &input.target);
        Self {
            bundle,
            agent: i.agent.clone(),
            uid: i.uid,
            exe: i.exe.clone(),
            cgroup_id: i.cgroup_id,
            ip: t.ip.clone(),
            port: t.port,
            name: t.name.clone(),
            protocol: t.protocol as u8,
            host: t.host.clone(),
            labels: t.labels.clone(),
        }
    }

    fn matches(&self, bundle: u64, input: &Input) -> bool {
        let (i, t) = (&input.identity, &input.target);
        self.bundle == bundle
            && self.uid == i.uid
            && self.cgroup_id == i.cgroup_id
            && self.port == t.port
            && self.protocol == t.protocol as u8
            && self.ip == t.ip
            && self.agent == i.agent
            && self.exe == i.exe
            && self.name == t.name
            && self.host == t.host
            && self.labels == t.labels
    }
}

/// Hash of the key fields, borrowed: a lookup allocates nothing.
fn hash(bundle: u64, input: &Input) -> u64 {
    let (i, t) = (&input.identity, &input.target);
    let mut h = DefaultHasher::new();
    bundle.hash(&mut h);
    i.agent.hash(&mut h);
    i.uid.hash(&mut h);
    i.exe.hash(&mut h);
    i.cgroup_id.hash(&mut h);
    t.ip.hash(&mut h);
    t.port.hash(&mut h);
    t.name.hash(&mut h);
    (t.protocol as u8).hash(&mut h);
    t.host.hash(&mut h);
    t.labels.hash(&mut h);
    h.finish()
}

#[derive(Default)]
struct Shard {
    current: HashMap<u64, (Key, Decision)>,
    previous: HashMap<u64, (Key, Decision)>,
}

impl Shard {
    fn insert(&mut self, hash: u64, entry: (Key, Decision)) {
        if self.current.len() >= GENERATION && !self.current.contains_key(&hash) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(hash, entry);
    }
}

pub struct ConnectCache {
    shards: Vec<Mutex<Shard>>,
}

impl ConnectCache {
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, Shard> {
        // The low bits pick the shard; HashMap rehashes the whole u64.
        self.shards[(hash as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `input` is a request this cache takes.
    pub fn applies(input: &Input) -> bool {
        matches!(input.request, Request::Connect)
    }

    pub fn get(&self, bundle: u64, input: &Input) -> Option<Decision> {
        let h = hash(bundle, input);
        let mut shard = self.shard(h);
        if let Some((key, decision)) = shard.current.get(&h) {
            return key.matches(bundle, input).then(|| decision.clone());
        }
        let (key, decision) = shard.previous.remove(&h)?;
        if !key.matches(bundle, input) {
            return None;
        }
        let hit = decision.clone();
        shard.insert(h, (key, decision));
        Some(hit)
    }

    pub fn put(&self, bundle: u64, input: &Input, decision: &Decision) {
        let h = hash(bundle, input);
        // A colliding entry for another key is simply replaced.
        self.shard(h)
            .insert(h, (Key::of(bundle, input), decision.clone()));
    }

    pub fn clear(&self) {
        for shard in &self.shards {
            let mut s = shard.lock().unwrap_or_else(|p| p.into_inner());
            s.current.clear();
            s.previous.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|p| p.into_inner());
                s.current.len() + s.previous.len()
            })
            .sum()
    }
}

/// `input.identity` fields a cached connect decision may depend on: the
/// key's, and those that are functions of them (`user` of `uid`; `cgroup`
/// and `unit` of `cgroup_id`).
const IDENTITY_FIELDS: [&str; 7] = ["uid", "user", "exe", "cgroup", "cgroup_id", "agent", "unit"];
/// Builtins whose result is not a function of their arguments.
const IMPURE: [&str; 7] = [
    "time.now_ns",
    "rand.intn",
    "uuid.rfc4122",
    "uuid.parse",
    "http.send",
    "opa.runtime",
    "net.lookup_ip_addr",
];

/// Why connect decisions of this bundle must not be cached, if they must
/// not: a reference to an input field outside the key, to `input` or
/// `input.identity` as a whole (iteration, `with`, imports), or to an
/// impure builtin, anywhere outside comments and strings of a non-test
/// file. Deliberately coarse: a false alarm only costs speed.
pub fn uncacheable(files: &[SourceFile]) -> Option<String> {
    for f in files {
        if !f.name.ends_with(".rego") || f.name.ends_with("_test.rego") {
            continue;
        }
        for name in dotted_names(&f.text) {
            if let Some(why) = check_name(&name) {
                return Some(format!("{}: {why}", f.name));
            }
        }
    }
    None
}

fn check_name(name: &str) -> Option<String> {
    if IMPURE.contains(&name) {
        return Some(format!("calls {name}"));
    }
    let mut parts = name.split('.');
    if parts.next() != Some("input") {
        return None;
    }
    match (parts.next(), parts.next()) {
        (Some("target" | "request"), _) => None,
        (Some("identity"), Some(field)) if IDENTITY_FIELDS.contains(&field) => None,
        _ => Some(format!("uses {name}")),
    }
}

/// `a.b.c` runs of identifier characters and dots, outside comments and
/// string literals, that do not follow a dot (so `x.input` is not `input`).
fn dotted_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = text.chars().peekable();
    let mut prev = ' ';
    while let Some(c) = chars.next() {
        match c {
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                prev = '\n';
            }
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' | '\n' => break,
                        _ => {}
                    }
                }
                prev = '"';
            }
            '`' => {
                for c in chars.by_ref() {
                    if c == '`' {
                        break;
                    }
                }
                prev = '`';
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut name = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_ascii_alphanumeric() || n == '_' || n == '.' {
                        name.push(n);
                        chars.next();
                    } else {
                        break;
                    }
                }
                let name = name.trim_end_matches('.').to_owned();
                if prev != '.' {
                    names.push(name);
                }
                prev = 'a';
            }
            c if c.is_whitespace() => {}
            c => prev = c,
        }
    }
    names
}
