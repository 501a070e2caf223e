//! A decision cache that cannot change an answer.
//!
//! The key is the bundle and the value at every `input` path the bundle
//! reads (`reads.rs`, from the bundle's tokens): two inputs with the same
//! values there are, for this bundle, the same input, so its decision is
//! the same. A bundle that reads raw SQL gets the text in the key; one that
//! reads `input` as a whole gets the whole input; one that calls a builtin
//! whose answer is not a function of its arguments (the clock, randomness,
//! the network) is not cached at all. Identity fields are in the key
//! exactly when the bundle reads them: agents whose read fields are equal
//! get the same answer from the policy itself. A reload changes the bundle
//! (and empties the cache).
//!
//! Entries keep the key values (regorus values are reference-counted, so
//! that is a few counter increments) and a hit compares them, so a hash
//! collision is a miss, never another input's decision. Only what the policy
//! answered is stored: a timeout or an evaluation error is never replayed.
//!
//! Bounded: 16 shards, each two generations of at most 128 entries. A full
//! current generation becomes the previous one (dropping the old previous);
//! a hit in the previous generation moves the entry back. So at most 4096
//! entries are kept and recently used ones survive (an approximate LRU
//! without per-hit bookkeeping).

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use regorus::Value;

use crate::decide::Decision;

const SHARDS: usize = 16;
/// Entries per shard generation; 16 × 2 × 128 = [`CAPACITY`].
const GENERATION: usize = 128;
/// Most entries the cache holds.
pub const CAPACITY: usize = SHARDS * 2 * GENERATION;

/// What a decision depends on: the bundle and the values it reads.
pub struct Key {
    bundle: u64,
    values: Vec<Value>,
    hash: u64,
}

impl Key {
    /// The key of `input` for a bundle that reads `paths` (`[]`: all of it).
    pub fn of(bundle: u64, paths: &[Vec<Value>], input: &Value) -> Self {
        let values: Vec<Value> = paths.iter().map(|p| at(input, p)).collect();
        let mut h = DefaultHasher::new();
        bundle.hash(&mut h);
        for v in &values {
            hash_value(v, &mut h);
        }
        Self {
            bundle,
            values,
            hash: h.finish(),
        }
    }
}

/// The value at `path`, `Undefined` where a step is missing (what the
/// policy's ref would see).
fn at(input: &Value, path: &[Value]) -> Value {
    let mut cur = input;
    for step in path {
        match cur {
            Value::Object(o) => match o.get(step) {
                Some(v) => cur = v,
                None => return Value::Undefined,
            },
            _ => return Value::Undefined,
        }
    }
    cur.clone()
}

/// Equal values hash equally (a different hash for equal values would
/// only be a miss).
fn hash_value(v: &Value, h: &mut DefaultHasher) {
    match v {
        Value::Null => 0u8.hash(h),
        Value::Bool(b) => (1u8, b).hash(h),
        Value::Number(n) => match n.as_i64() {
            Some(i) => (2u8, i).hash(h),
            None => (3u8, n.as_f64().map(f64::to_bits)).hash(h),
        },
        Value::String(s) => (4u8, &**s).hash(h),
        Value::Array(a) => {
            (5u8, a.len()).hash(h);
            a.iter().for_each(|x| hash_value(x, h));
        }
        Value::Set(s) => {
            (6u8, s.len()).hash(h);
            s.iter().for_each(|x| hash_value(x, h));
        }
        Value::Object(o) => {
            (7u8, o.len()).hash(h);
            for (k, x) in o.iter() {
                hash_value(k, h);
                hash_value(x, h);
            }
        }
        Value::Undefined => 8u8.hash(h),
    }
}

struct Entry {
    bundle: u64,
    values: Vec<Value>,
    decision: Decision,
}

impl Entry {
    fn matches(&self, key: &Key) -> bool {
        self.bundle == key.bundle && self.values == key.values
    }
}

#[derive(Default)]
struct Shard {
    current: HashMap<u64, Entry>,
    previous: HashMap<u64, Entry>,
}

impl Shard {
    fn insert(&mut self, hash: u64, entry: Entry) {
        if self.current.len() >= GENERATION && !self.current.contains_key(&hash) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(hash, entry);
    }
}

/// Lookups after which a cache that almost never hits is only sampled.
const WARM_UP: u64 = 4096;
/// A cold cache is still tried for one request in this many, so it warms
/// up again when the traffic changes.
const SAMPLE: u64 = 64;

pub struct DecisionCache {
    shards: Vec<Mutex<Shard>>,
    lookups: AtomicU64,
    hits: AtomicU64,
    /// Entries stored since the last clear (tests, diagnostics).
    puts: AtomicU64,
}

impl DecisionCache {
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            lookups: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            puts: AtomicU64::new(0),
        }
    }

    /// Whether to key, look up and store this decision. A bundle whose key
    /// holds text that never repeats (raw SQL with its literals) misses
    /// every time; past the warm-up, with under 1 % hits, only a sample of
    /// requests pays for the key and the insert. Only speed depends on it.
    pub fn worth_trying(&self) -> bool {
        let lookups = self.lookups.fetch_add(1, Ordering::Relaxed);
        lookups < WARM_UP
            || self.hits.load(Ordering::Relaxed) * 100 >= lookups
            || lookups.is_multiple_of(SAMPLE)
    }

    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, Shard> {
        // The low bits pick the shard; HashMap rehashes the whole u64.
        self.shards[(hash as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &Key) -> Option<Decision> {
        let mut shard = self.shard(key.hash);
        if let Some(entry) = shard.current.get(&key.hash) {
            let hit = entry.matches(key).then(|| entry.decision.clone());
            if hit.is_some() {
                self.hits.fetch_add(1, Ordering::Relaxed);
            }
            return hit;
        }
        let entry = shard.previous.remove(&key.hash)?;
        if !entry.matches(key) {
            return None;
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        let hit = entry.decision.clone();
        shard.insert(key.hash, entry);
        Some(hit)
    }

    pub fn put(&self, key: Key, decision: &Decision) {
        self.puts.fetch_add(1, Ordering::Relaxed);
        // A colliding entry for another key is simply replaced.
        self.shard(key.hash).insert(
            key.hash,
            Entry {
                bundle: key.bundle,
                values: key.values,
                decision: decision.clone(),
            },
        );
    }

    pub fn clear(&self) {
        self.lookups.store(0, Ordering::Relaxed);
        self.hits.store(0, Ordering::Relaxed);
        self.puts.store(0, Ordering::Relaxed);
        for shard in &self.shards {
            let mut s = shard.lock().unwrap_or_else(|p| p.into_inner());
            s.current.clear();
            s.previous.clear();
        }
    }

    pub fn puts(&self) -> u64 {
        self.puts.load(Ordering::Relaxed)
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
