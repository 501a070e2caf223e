//! Policy as code: a folder of Rego files, compiled with regorus, decides
//! every connection and request (`data.agentguard.decision`).
//!
//! The live bundle sits behind an `ArcSwap`: a decision loads it without a
//! lock, a reload builds a new bundle off to the side and swaps it in only if
//! it compiles and its own `test_*` rules pass. Everything that goes wrong
//! on the way to a decision (no bundle, compile or evaluation error, timeout,
//! undefined or malformed result) is a deny whose reason says why.

mod bundle;
mod cache;
pub mod cli;
mod conflicts;
mod eval;
mod limits;
mod reads;
#[doc(hidden)]
pub mod samples;
mod to_value;
mod watch;

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use regorus::Value;
use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, warn};

pub use self::{
    bundle::{
        Bundle, EvalPath, Evaluator, MAX_INSTRUCTIONS, SourceFile, TestResult, VM_ENV, read_dir,
    },
    cache::CAPACITY as DECISION_CACHE_CAPACITY,
    eval::parse_decision,
    reads::Reads,
    to_value::to_value,
    watch::Reloader,
};
use crate::decide::{Decide, Decision, Input, Prepared};

/// The rule every request is decided by.
pub const ENTRYPOINT: &str = "data.agentguard.decision";
/// Wall-clock budget of one decision. Real policies take microseconds; this
/// only stops a runaway one (on the VM the instruction limit usually stops
/// it first). It is wall-clock time, so it is set well above what a busy
/// host's scheduler can add to a real decision: a valid statement must not
/// be denied because the machine is loaded.
pub const DEFAULT_BUDGET: Duration = Duration::from_millis(250);
/// Budget of one `test_*` rule (tests may build bigger inputs).
pub const TEST_BUDGET: Duration = Duration::from_secs(2);
/// Name of the state file in run_dir, read by `status` and `policy reload`.
pub const STATE_FILE: &str = "policy.json";

/// Used by `exec` when there is no policy folder: the foundation's
/// behaviour (only configured targets), as Rego, so it goes through the
/// same fail-closed path as any policy.
pub const BUILTIN_POLICY: &str = r#"package agentguard

import rego.v1

default decision := {"action": "deny", "reason": "agentguard: no decision (built-in policy)"}

decision := {"action": "allow", "reason": sprintf("configured target %s", [input.target.name])} if {
	is_string(input.target.name)
}

decision := {"action": "deny", "reason": sprintf("%v:%v is not a configured target", [input.target.ip, input.target.port])} if {
	not is_string(input.target.name)
}
"#;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("policy folder {0} has no .rego files")]
    Empty(PathBuf),
    #[error("policy does not compile: {0}")]
    Compile(String),
    #[error("invalid data file {file}: {message}")]
    Data { file: String, message: String },
    #[error(
        "the bundle has no rule `decision` in package agentguard (the entrypoint {ENTRYPOINT})"
    )]
    NoEntrypoint,
    #[error("{failed} of {total} policy tests failed: {names}")]
    TestsFailed {
        failed: usize,
        total: usize,
        names: String,
    },
}

/// Where bundles come from.
#[derive(Debug, Clone)]
enum Origin {
    Dir(PathBuf),
    Builtin,
}

enum Live {
    Ready(Arc<Bundle>),
    /// No good bundle was ever loaded; the cause of the last failure.
    Missing(String),
}

/// What `status` shows; written to `<run_dir>/policy.json` after every
/// reload attempt.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PolicyState {
    pub source: String,
    pub version: Option<String>,
    pub files: Vec<String>,
    pub tests: usize,
    /// Unix seconds.
    pub loaded_at: Option<u64>,
    pub attempts: u64,
    pub last_attempt_at: Option<u64>,
    /// The last attempt's failure; cleared by a successful (or unchanged) load.
    pub last_error: Option<String>,
    /// Which evaluator decides for the live bundle: `rvm (bytecode VM)` or
    /// `interpreter (why)`.
    #[serde(default)]
    pub engine: Option<String>,
    /// `on`, or `off (why)`: whether decisions are cached.
    #[serde(default)]
    pub connect_cache: Option<String>,
    /// The `input` paths the live bundle reads (the decision cache's key).
    #[serde(default)]
    pub reads: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    Loaded(String),
    Unchanged(String),
}

pub struct PolicyEngine {
    origin: Origin,
    live: ArcSwap<Live>,
    pool: eval::Pool,
    cache: cache::DecisionCache,
    budget: Duration,
    /// Whether bundles may run on the bytecode VM.
    allow_vm: bool,
    state: Mutex<PolicyState>,
    state_file: Option<PathBuf>,
}

impl PolicyEngine {
    /// Loads the folder now; a failure leaves the engine denying everything
    /// (and is logged) until a reload succeeds.
    pub fn from_dir(dir: &Path, state_file: Option<PathBuf>) -> Arc<Self> {
        Self::with_budget(Origin::Dir(dir.to_owned()), state_file, DEFAULT_BUDGET)
    }

    /// The built-in "configured targets only" policy.
    pub fn builtin() -> Arc<Self> {
        Self::with_budget(Origin::Builtin, None, DEFAULT_BUDGET)
    }

    fn with_budget(origin: Origin, state_file: Option<PathBuf>, budget: Duration) -> Arc<Self> {
        Self::with_options(origin, state_file, budget, !bundle::vm_disabled())
    }

    fn with_options(
        origin: Origin,
        state_file: Option<PathBuf>,
        budget: Duration,
        allow_vm: bool,
    ) -> Arc<Self> {
        let source = match &origin {
            Origin::Dir(d) => d.display().to_string(),
            Origin::Builtin => "built-in (configured targets only)".into(),
        };
        let engine = Arc::new(Self {
            origin,
            live: ArcSwap::from_pointee(Live::Missing("not loaded yet".into())),
            pool: eval::Pool::new(),
            cache: cache::DecisionCache::new(),
            budget,
            allow_vm,
            state: Mutex::new(PolicyState {
                source,
                ..PolicyState::default()
            }),
            state_file,
        });
        engine.reload_logged("start");
        engine
    }

    pub fn dir(&self) -> Option<&Path> {
        match &self.origin {
            Origin::Dir(d) => Some(d),
            Origin::Builtin => None,
        }
    }

    /// The live bundle's version, if any.
    pub fn version(&self) -> Option<String> {
        match &**self.live.load() {
            Live::Ready(b) => Some(b.version.clone()),
            Live::Missing(_) => None,
        }
    }

    pub fn state(&self) -> PolicyState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads, compiles and tests the bundle; swaps it in only if all of that
    /// succeeds. The state lock also serializes concurrent reloads.
    pub fn reload(&self) -> Result<ReloadOutcome, PolicyError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.load();
        let now = unix_now();
        state.attempts += 1;
        state.last_attempt_at = Some(now);
        match &result {
            Ok(outcome) => {
                state.last_error = None;
                if let (ReloadOutcome::Loaded(_), Live::Ready(b)) = (outcome, &**self.live.load()) {
                    state.version = Some(b.version.clone());
                    state.files = b.files.clone();
                    state.tests = b.tests.len();
                    state.loaded_at = Some(now);
                    state.engine = Some(b.path_description());
                    state.connect_cache = Some(match &b.reads.uncacheable {
                        None => "on".into(),
                        Some(why) => format!("off ({why})"),
                    });
                    state.reads = Some(b.reads.describe());
                }
            }
            Err(e) => {
                crate::metrics::get().policy_reload_failures.inc();
                state.last_error = Some(e.to_string());
                if let Live::Missing(_) = &**self.live.load() {
                    self.live.store(Arc::new(Live::Missing(e.to_string())));
                }
            }
        }
        if let Some(path) = &self.state_file
            && let Err(e) = write_state(path, &state)
        {
            warn!("cannot write policy state {}: {e}", path.display());
        }
        result
    }

    /// [`reload`](Self::reload) with the outcome logged; `why` names the trigger.
    pub fn reload_logged(&self, why: &str) {
        match self.reload() {
            Ok(ReloadOutcome::Loaded(version)) => {
                let state = self.state();
                info!(
                    trigger = why,
                    %version,
                    files = state.files.len(),
                    tests = state.tests,
                    source = %state.source,
                    engine = state.engine.as_deref().unwrap_or("-"),
                    decision_cache = state.connect_cache.as_deref().unwrap_or("-"),
                    reads = state.reads.as_deref().unwrap_or("-"),
                    "policy loaded"
                );
            }
            Ok(ReloadOutcome::Unchanged(version)) => {
                debug!(trigger = why, %version, "policy unchanged")
            }
            Err(e) => match self.version() {
                Some(version) => error!(
                    trigger = why,
                    "policy NOT reloaded, version {version} stays live: {e}"
                ),
                None => error!(
                    trigger = why,
                    "no valid policy loaded, every connection is denied: {e}"
                ),
            },
        }
    }

    fn load(&self) -> Result<ReloadOutcome, PolicyError> {
        let files = match &self.origin {
            Origin::Dir(dir) => bundle::read_dir(dir)?,
            Origin::Builtin => {
                vec![SourceFile {
                    name: "builtin/agentguard.rego".into(),
                    text: BUILTIN_POLICY.into(),
                }]
            }
        };
        let version = bundle::version_of(&files);
        if let Live::Ready(live) = &**self.live.load()
            && live.version == version
        {
            return Ok(ReloadOutcome::Unchanged(version));
        }
        let bundle = Bundle::compile_with(&files, self.budget, self.allow_vm)?;
        let results = bundle.run_tests(TEST_BUDGET);
        let failed: Vec<&TestResult> = results.iter().filter(|r| !r.passed).collect();
        if !failed.is_empty() {
            let names = failed
                .iter()
                .map(|r| match &r.error {
                    Some(e) => format!("{} ({e})", r.name),
                    None => r.name.clone(),
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Err(PolicyError::TestsFailed {
                failed: failed.len(),
                total: results.len(),
                names,
            });
        }
        if let Some(why) = &bundle.interpreter_reason {
            warn!(%version, "policy decisions run on the tree interpreter: {why}");
        }
        self.live.store(Arc::new(Live::Ready(Arc::new(bundle))));
        // Entries are keyed by bundle, so old ones could not hit; free them.
        self.cache.clear();
        Ok(ReloadOutcome::Loaded(version))
    }

    /// Decides an input document given as a regorus value (protocol
    /// sessions, benches and the CLI build these directly). Never cached.
    pub fn decide_value(&self, input: Value) -> Decision {
        let live = self.live.load();
        match &**live {
            Live::Ready(bundle) => self.evaluate(bundle, input).0,
            Live::Missing(cause) => {
                Decision::deny(format!("agentguard: no valid policy loaded: {cause}"))
            }
        }
    }

    /// The decision, and whether the policy itself gave it (false for the
    /// fail-closed denies: evaluation error, timeout, malformed decision).
    fn evaluate(&self, bundle: &Arc<Bundle>, input: Value) -> (Decision, bool) {
        let result = match bundle.inline() {
            Ok(()) => eval::evaluate_inline(bundle, input),
            Err(_) => self.pool.evaluate(bundle, input, self.budget),
        }
        .and_then(|v| parse_decision(&v));
        match result {
            Ok(v) => (
                Decision {
                    action: v.action,
                    reason: v.reason,
                    mask: v.mask,
                    policy_version: bundle.version.clone(),
                    approver: None,
                },
                true,
            ),
            Err(cause) => {
                warn!(policy_version = %bundle.version, "policy failed, denying: {cause}");
                let deny = Decision {
                    policy_version: bundle.version.clone(),
                    ..Decision::deny(format!("agentguard: policy error: {cause}"))
                };
                (deny, false)
            }
        }
    }

    /// Decisions stored in the cache since the last reload (tests).
    pub fn cache_puts(&self) -> u64 {
        self.cache.puts()
    }

    /// Entries in the decision cache (tests, diagnostics).
    pub fn cached_decisions(&self) -> usize {
        self.cache.len()
    }
}

impl PolicyEngine {
    /// A typed input's decision, through the cache; `encode` gives the
    /// input document.
    fn decide_typed(&self, encode: impl FnOnce() -> Result<Value, String>) -> Decision {
        let live = self.live.load();
        let bundle = match &**live {
            Live::Ready(b) => b,
            Live::Missing(cause) => {
                return Decision::deny(format!("agentguard: no valid policy loaded: {cause}"));
            }
        };
        let value = match encode() {
            Ok(v) => v,
            Err(e) => {
                return Decision::deny(format!("agentguard: cannot encode the policy input: {e}"));
            }
        };
        let key = (bundle.reads.uncacheable.is_none() && self.cache.worth_trying())
            .then(|| cache::Key::of(bundle.id, &bundle.key_paths, &value));
        if let Some(key) = &key
            && let Some(hit) = self.cache.get(key)
        {
            return hit;
        }
        let started = std::time::Instant::now();
        let (decision, answered) = self.evaluate(bundle, value);
        crate::metrics::get()
            .policy_evaluation
            .observe(started.elapsed().as_secs_f64());
        // Only what the policy itself answered: a watchdog timeout or an
        // evaluation error is never replayed from the cache.
        if let Some(key) = key
            && answered
        {
            self.cache.put(key, &decision);
        }
        decision
    }
}

impl Decide for PolicyEngine {
    fn decide(&self, input: &Input) -> Decision {
        self.decide_typed(|| to_value(input).map_err(|e| e.to_string()))
    }

    fn decide_prepared(&self, input: &Input, prepared: &Prepared) -> Decision {
        self.decide_typed(|| {
            let [identity, target] = prepared
                .encoded
                .get_or_init(|| {
                    let encode = |v: Result<Value, to_value::Error>| v.map_err(|e| e.to_string());
                    Ok([
                        encode(to_value(&input.identity))?,
                        encode(to_value(&input.target))?,
                    ])
                })
                .clone()?;
            // The same document `to_value(input)` makes (tests.rs checks).
            let request = to_value(&input.request).map_err(|e| e.to_string())?;
            let mut doc = std::collections::BTreeMap::new();
            doc.insert(Value::from("identity"), identity);
            doc.insert(Value::from("target"), target);
            doc.insert(Value::from("request"), request);
            Ok(Value::from(doc))
        })
    }
}

/// Reads and compiles a folder without installing it anywhere (CLI, benches).
pub fn compile_dir(dir: &Path) -> Result<Bundle, PolicyError> {
    Bundle::compile(&bundle::read_dir(dir)?, DEFAULT_BUDGET)
}

/// Builds the engine a guard uses for `dir`: the folder's bundle when it
/// exists, the built-in policy when `fallback` allows and it does not.
pub fn engine_for(
    dir: &Path,
    state_file: Option<PathBuf>,
    builtin_if_missing: bool,
) -> Arc<PolicyEngine> {
    if builtin_if_missing && !dir.exists() {
        info!(
            "no policy folder at {}: using the built-in policy (configured targets only)",
            dir.display()
        );
        return PolicyEngine::builtin();
    }
    PolicyEngine::from_dir(dir, state_file)
}

/// regorus errors are multi-line (`--> file:line:col`, a source excerpt with
/// a caret, `error: message`); reasons, logs and status want one line:
/// `file:line:col: message`.
pub(crate) fn one_line(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    let location = text.lines().find_map(|l| l.trim().strip_prefix("--> "));
    let message = text.lines().find_map(|l| l.trim().strip_prefix("error: "));
    match (location, message) {
        (Some(loc), Some(msg)) => format!("{loc}: {msg}"),
        _ => text.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Atomically, so `status` never reads half a file.
fn write_state(path: &Path, state: &PolicyState) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    fs::write(
        &tmp,
        serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?,
    )?;
    fs::rename(&tmp, path)
}

pub fn read_state(run_dir: &Path) -> Option<PolicyState> {
    fs::read(run_dir.join(STATE_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// `2024-05-01T12:00:00Z` from unix seconds (no date crate for one line).
pub fn format_time(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The `policy:` lines of `agentguard status`.
pub fn status_lines(run_dir: &Path, daemon_running: bool) -> Vec<String> {
    if !daemon_running {
        return vec!["policy:    (no daemon)".into()];
    }
    let Some(s) = read_state(run_dir) else {
        return vec!["policy:    unknown (the daemon has not written its policy state)".into()];
    };
    let mut lines = Vec::new();
    match (&s.version, s.loaded_at) {
        (Some(v), loaded) => lines.push(format!(
            "policy:    version {v} ({} files, {} tests) from {}, loaded {}",
            s.files.len(),
            s.tests,
            s.source,
            loaded.map_or("-".into(), format_time)
        )),
        (None, _) => lines.push(format!(
            "policy:    NONE LOADED from {} — every connection is denied",
            s.source
        )),
    }
    if let Some(e) = &s.last_error {
        let when = s.last_attempt_at.map_or("-".into(), format_time);
        match &s.version {
            Some(v) => lines.push(format!(
                "policy:    last reload FAILED at {when} (version {v} stays live): {e}"
            )),
            None => lines.push(format!("policy:    last load FAILED at {when}: {e}")),
        }
    }
    if s.version.is_some()
        && let Some(engine) = &s.engine
    {
        let key = match (&s.reads, s.connect_cache.as_deref()) {
            (Some(reads), Some("on")) => format!(" (key: bundle, {reads})"),
            _ => String::new(),
        };
        lines.push(format!(
            "policy:    evaluated by {engine}; decision cache {}{key}",
            s.connect_cache.as_deref().unwrap_or("-")
        ));
    }
    lines
}

#[cfg(test)]
mod tests;
