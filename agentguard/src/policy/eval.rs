//! Where a decision is evaluated: on the caller's thread when the VM's own
//! limits bound it, else off the proxy's threads, under a watchdog.
//!
//! Inline: a bundle on the bytecode VM whose builtins all cost time linear
//! in their arguments (`reads.rs`) is stopped by the VM's instruction limit
//! and its timer (checked between instructions) within a small factor of
//! the budget, so it runs on the connection's own task with no hand-off.
//! Each thread keeps its own loaded VM per bundle. A timer or limit error
//! is a deny like any other.
//!
//! regorus bounds Rego-level work (the interpreter's execution timer, the
//! VM's timer and instruction limit), but a single builtin call (a huge
//! `sprintf` width, `replace` on a big string) runs to completion before
//! either is looked at. So decisions run on a small pool of evaluator
//! threads and the caller waits at most the budget plus a grace period:
//! past that it denies, and a fresh worker replaces the stuck one (up to a
//! cap), so the proxy keeps serving whatever the policy does.
//!
//! Each worker keeps its own evaluator (a loaded VM, or an engine clone when
//! the bundle runs on the interpreter), keyed by bundle id, so there is no
//! lock and no clone on the hot path. The hand-off is a job queue to the
//! workers (a mutex and a condvar: an idle worker sleeps in the kernel
//! instead of spinning and yielding the way a channel's receive does, which
//! on a small busy host took CPU from the proxy) and, back, a reply slot per
//! calling thread (reused across calls, no allocation) that the worker fills
//! before unparking the caller. A sequence number makes a late answer from
//! a stuck worker land nowhere.

use regorus::Value;
use std::{
    collections::VecDeque,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread::{self, Thread},
    time::{Duration, Instant},
};
use tracing::{error, warn};

use super::{
    ENTRYPOINT,
    bundle::{Bundle, Evaluator},
};
use crate::decide::Action;

/// Time a worker may overrun the budget (scheduling, the timer's check
/// interval) before the watchdog gives up on it.
const GRACE: Duration = Duration::from_millis(25);
/// Workers beyond the base count, spawned only to replace stuck ones.
const EXTRA_WORKERS: usize = 8;

type Answer = Result<Value, String>;

/// Where a worker leaves its answer for one calling thread.
struct Slot {
    state: Mutex<SlotState>,
    caller: Thread,
}

struct SlotState {
    /// The call being waited for; a worker answering another one is late.
    seq: u64,
    answer: Option<Answer>,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores the answer if the caller still waits for it; false if it gave up.
    fn answer(&self, seq: u64, answer: Answer) -> bool {
        let delivered = {
            let mut state = self.lock();
            if state.seq == seq {
                state.answer = Some(answer);
                true
            } else {
                false
            }
        };
        if delivered {
            self.caller.unpark();
        }
        delivered
    }
}

thread_local! {
    static SLOT: Arc<Slot> = Arc::new(Slot {
        state: Mutex::new(SlotState { seq: 0, answer: None }),
        caller: thread::current(),
    });
}

struct Job {
    bundle: Arc<Bundle>,
    input: Value,
    deadline: Instant,
    slot: Arc<Slot>,
    seq: u64,
}

/// Jobs for the workers; `None` once the pool is dropped.
struct Queue {
    jobs: Mutex<Option<VecDeque<Job>>>,
    ready: Condvar,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<VecDeque<Job>>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// False when the pool is closed.
    fn push(&self, job: Job) -> bool {
        {
            let mut jobs = self.lock();
            let Some(q) = jobs.as_mut() else {
                return false;
            };
            q.push_back(job);
        }
        self.ready.notify_one();
        true
    }

    /// The next job, waiting for one; None once the pool is closed.
    fn pop(&self) -> Option<Job> {
        let mut jobs = self.lock();
        loop {
            match jobs.as_mut() {
                None => return None,
                Some(q) => {
                    if let Some(job) = q.pop_front() {
                        return Some(job);
                    }
                }
            }
            jobs = self.ready.wait(jobs).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn close(&self) {
        *self.lock() = None;
        self.ready.notify_all();
    }
}

thread_local! {
    /// This thread's evaluator for inline decisions, keyed by bundle id.
    static INLINE: std::cell::RefCell<Option<(u64, Evaluator)>> =
        const { std::cell::RefCell::new(None) };
}

/// Evaluates on this thread; only for bundles whose evaluation the VM's
/// limits bound ([`Bundle::inline`]). A panic in the engine is a deny.
pub fn evaluate_inline(bundle: &Bundle, input: Value) -> Result<Value, String> {
    INLINE.with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return Err("policy evaluation re-entered on one thread".into());
        };
        let evaluator = match &mut *slot {
            Some((id, evaluator)) if *id == bundle.id => evaluator,
            slot => &mut slot.insert((bundle.id, bundle.evaluator()?)).1,
        };
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| evaluator.eval(input)));
        run.unwrap_or_else(|_| {
            // Whatever state the panic left is not reused.
            *slot = None;
            Err("the policy engine panicked".into())
        })
    })
}

pub struct Pool {
    queue: Arc<Queue>,
    live: Arc<AtomicUsize>,
    base: usize,
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl Pool {
    pub fn new() -> Self {
        let base = thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8));
        let pool = Self {
            queue: Arc::new(Queue {
                jobs: Mutex::new(Some(VecDeque::new())),
                ready: Condvar::new(),
            }),
            live: Arc::new(AtomicUsize::new(0)),
            base,
        };
        for _ in 0..base {
            pool.spawn_worker();
        }
        pool
    }

    fn spawn_worker(&self) -> bool {
        let queue = Arc::clone(&self.queue);
        let live = Arc::clone(&self.live);
        let base = self.base;
        live.fetch_add(1, Ordering::SeqCst);
        let spawned = thread::Builder::new()
            .name("agentguard-policy".into())
            .spawn(move || worker(&queue, &live, base));
        if let Err(e) = spawned {
            self.live.fetch_sub(1, Ordering::SeqCst);
            error!("cannot start a policy worker thread: {e}");
            return false;
        }
        true
    }

    /// The decision document, or why there is none. Waits at most
    /// `budget + GRACE`.
    pub fn evaluate(
        &self,
        bundle: &Arc<Bundle>,
        input: Value,
        budget: Duration,
    ) -> Result<Value, String> {
        let wait = budget + GRACE;
        let deadline = Instant::now() + wait;
        let slot = SLOT.with(Arc::clone);
        let seq = {
            let mut state = slot.lock();
            state.seq = state.seq.wrapping_add(1);
            state.answer = None;
            state.seq
        };
        let job = Job {
            bundle: Arc::clone(bundle),
            input,
            deadline,
            slot: Arc::clone(&slot),
            seq,
        };
        if !self.queue.push(job) {
            return Err("policy workers are gone".into());
        }
        loop {
            {
                let mut state = slot.lock();
                if let Some(answer) = state.answer.take() {
                    return answer;
                }
                if Instant::now() >= deadline {
                    // Whatever the stuck worker answers later is dropped.
                    state.seq = state.seq.wrapping_add(1);
                    break;
                }
            }
            // Spurious wake-ups (or a stale unpark token) just loop.
            thread::park_timeout(deadline.saturating_duration_since(Instant::now()));
        }
        let live = self.live.load(Ordering::SeqCst);
        if live < self.base + EXTRA_WORKERS {
            self.spawn_worker();
        }
        warn!(
            live_workers = live,
            "policy evaluation overran its budget; watchdog denied"
        );
        Err(format!(
            "policy evaluation did not finish within {} ms (watchdog)",
            wait.as_millis()
        ))
    }
}

fn worker(queue: &Queue, live: &AtomicUsize, base: usize) {
    let mut cached: Option<(u64, Evaluator)> = None;
    while let Some(job) = queue.pop() {
        // Queued behind a stuck evaluation: the caller has already denied.
        if Instant::now() >= job.deadline {
            continue;
        }
        let result = match &mut cached {
            Some((id, evaluator)) if *id == job.bundle.id => evaluator.eval(job.input),
            slot => match job.bundle.evaluator() {
                Ok(evaluator) => slot.insert((job.bundle.id, evaluator)).1.eval(job.input),
                Err(e) => Err(e),
            },
        };
        // The caller gave up on us: we were the stuck one and a replacement
        // exists. Step back if the pool is above its base size.
        if !job.slot.answer(job.seq, result) && live.load(Ordering::SeqCst) > base {
            live.fetch_sub(1, Ordering::SeqCst);
            return;
        }
    }
    live.fetch_sub(1, Ordering::SeqCst);
}

/// What a policy returned, checked: `action` is required, `reason` and
/// `mask` optional but typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub action: Action,
    pub reason: String,
    pub mask: Vec<String>,
}

pub fn parse_decision(value: &Value) -> Result<Verdict, String> {
    let object = match value {
        Value::Object(o) => o,
        Value::Undefined => return Err(format!("{ENTRYPOINT} is undefined for this input")),
        other => return Err(format!("{ENTRYPOINT} is not an object: {}", short(other))),
    };
    let field = |name: &str| object.get(&Value::from(name));
    let action = match field("action") {
        Some(Value::String(s)) => match s.as_ref() {
            "allow" => Action::Allow,
            "deny" => Action::Deny,
            "approve" => Action::Approve,
            other => {
                return Err(format!(
                    "unknown action {other:?} (want allow, deny or approve)"
                ));
            }
        },
        Some(other) => return Err(format!("action is not a string: {}", short(other))),
        None => return Err("decision has no action".into()),
    };
    let reason = match field("reason") {
        Some(Value::String(s)) => s.to_string(),
        None | Some(Value::Null) => String::new(),
        Some(other) => return Err(format!("reason is not a string: {}", short(other))),
    };
    let mask = match field("mask") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => strings(items.iter(), "mask")?,
        Some(Value::Set(items)) => strings(items.iter(), "mask")?,
        Some(other) => return Err(format!("mask is not an array: {}", short(other))),
    };
    Ok(Verdict {
        action,
        reason,
        mask,
    })
}

fn strings<'a>(items: impl Iterator<Item = &'a Value>, what: &str) -> Result<Vec<String>, String> {
    items
        .map(|v| match v {
            Value::String(s) => Ok(s.to_string()),
            other => Err(format!("{what} entry is not a string: {}", short(other))),
        })
        .collect()
}

fn short(v: &Value) -> String {
    let mut s = v
        .to_json_str()
        .unwrap_or_else(|_| format!("{v:?}"))
        .replace('\n', " ");
    if s.len() > 80 {
        let mut cut = 80;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}
