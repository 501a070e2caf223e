//! A policy bundle: every `.rego` file in a folder (recursively, hidden
//! entries skipped) plus `data.json` / `data.yaml` documents, compiled into
//! one prepared regorus [`Engine`]. The version is a hash of the sorted file
//! names and contents, so the same files always give the same version.

use std::{
    fmt::Write as _,
    fs,
    num::NonZeroU32,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use regorus::{
    Engine, Rc, Value,
    languages::rego::compiler::Compiler,
    rvm::{Program, RegoVM},
    unstable::{Expr, Rule, RuleHead},
    utils::limits::ExecutionTimerConfig,
};
use sha2::{Digest as _, Sha256};

use super::{ENTRYPOINT, PolicyError, limits};

/// Where the decision rule lives: `data.agentguard.decision`.
const ENTRY_PACKAGE: &str = "agentguard";
const ENTRY_RULE: &str = "decision";
/// Hex digits of the sha256 kept as the version: 64 bits tell bundles apart.
const VERSION_LEN: usize = 16;

/// One file of a bundle, as read.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Relative to the bundle folder, `/`-separated.
    pub name: String,
    pub text: String,
}

/// Environment variable that turns the bytecode VM off (`0`, `off`,
/// `false`, `interpreter`): every decision then runs on the tree
/// interpreter. An escape hatch, not a tuning knob.
pub const VM_ENV: &str = "AGENTGUARD_POLICY_VM";
/// Instructions one decision may execute on the VM. The shipped policies
/// need a few thousand; a million is well past any real policy and, at tens
/// of nanoseconds per instruction, about as long as the time budget.
pub const MAX_INSTRUCTIONS: usize = 1_000_000;

/// A compiled, prepared bundle. Immutable once built: evaluations clone the
/// engine (cheap: modules and data are shared behind `Arc`s) or load the
/// VM program (shared behind an `Arc`).
pub struct Bundle {
    /// Unique per compiled bundle in this process; workers key their engine
    /// clone on it.
    pub id: u64,
    pub version: String,
    pub files: Vec<String>,
    /// Full rule paths of the `test_*` rules, e.g. `data.agentguard.sql_test.test_drop`.
    pub tests: Vec<String>,
    /// The tree interpreter: `test_*` rules (they may use `with`), and
    /// decisions when the VM cannot take the bundle.
    pub engine: Engine,
    /// `data.agentguard.decision` compiled to regorus's bytecode VM, when
    /// the bundle compiles to it (and the VM is not turned off).
    pub vm: Option<VmProgram>,
    /// Why decisions run on the interpreter, when `vm` is `None`.
    pub interpreter_reason: Option<String>,
    /// Budget of one decision (the VM's execution timer; the interpreter's
    /// is set on `engine`).
    pub budget: Duration,
    /// Instructions one decision may execute on the VM ([`MAX_INSTRUCTIONS`]).
    pub max_instructions: usize,
    /// What the bundle reads from `input` and which builtins it calls.
    pub reads: super::reads::Reads,
    /// [`Self::reads`]' paths as regorus keys, for the decision cache.
    pub key_paths: Vec<Vec<Value>>,
}

/// What a VM needs besides its program: the bundle's data documents.
#[derive(Clone)]
pub struct VmProgram {
    pub program: std::sync::Arc<Program>,
    pub data: Value,
}

/// Which evaluator decides, for logs and `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalPath {
    Vm,
    Interpreter,
}

impl EvalPath {
    pub fn name(self) -> &'static str {
        match self {
            Self::Vm => "rvm",
            Self::Interpreter => "interpreter",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TestResult {
    pub name: String,
    pub passed: bool,
    /// Set when the test errored (as opposed to being false or undefined).
    pub error: Option<String>,
    pub duration: Duration,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Reads the bundle's files in a stable order.
pub fn read_dir(dir: &Path) -> Result<Vec<SourceFile>, PolicyError> {
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort_by(|a, b| a.name.cmp(&b.name));
    if !files.iter().any(|f| f.name.ends_with(".rego")) {
        return Err(PolicyError::Empty(dir.to_owned()));
    }
    Ok(files)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<SourceFile>) -> Result<(), PolicyError> {
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |source| PolicyError::Read { path, source }
    };
    for entry in fs::read_dir(dir).map_err(read_err(dir))? {
        let entry = entry.map_err(read_err(dir))?;
        let path = entry.path();
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        // Hidden entries: editor swap files, and Kubernetes ConfigMap mounts'
        // `..data` folders, whose files are also linked at the top level.
        if file_name.starts_with('.') {
            continue;
        }
        // Follows symlinks (ConfigMap files are symlinks).
        let meta = fs::metadata(&path).map_err(read_err(&path))?;
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else if file_name.ends_with(".rego") || is_data_file(file_name) {
            let text = fs::read_to_string(&path).map_err(read_err(&path))?;
            let name = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            out.push(SourceFile { name, text });
        }
    }
    Ok(())
}

fn is_data_file(name: &str) -> bool {
    matches!(name, "data.json" | "data.yaml" | "data.yml")
}

/// sha256 over (name, length, contents) of every file, in name order.
pub fn version_of(files: &[SourceFile]) -> String {
    let mut hash = Sha256::new();
    for f in files {
        hash.update(f.name.as_bytes());
        hash.update([0]);
        hash.update((f.text.len() as u64).to_le_bytes());
        hash.update(f.text.as_bytes());
    }
    let mut hex = String::with_capacity(64);
    for byte in hash.finalize() {
        let _ = write!(hex, "{byte:02x}");
    }
    hex.truncate(VERSION_LEN);
    hex
}

impl Bundle {
    /// Parses, loads data, prepares the engine and checks that the
    /// entrypoint exists. `budget` bounds every later evaluation. Decisions
    /// run on the VM when the bundle compiles to it, unless [`VM_ENV`] says
    /// otherwise.
    pub fn compile(files: &[SourceFile], budget: Duration) -> Result<Self, PolicyError> {
        Self::compile_with(files, budget, !vm_disabled())
    }

    /// [`compile`](Self::compile), with the VM allowed or not.
    pub fn compile_with(
        files: &[SourceFile],
        budget: Duration,
        allow_vm: bool,
    ) -> Result<Self, PolicyError> {
        let mut engine = Engine::new();
        engine.set_rego_v0(false);
        engine.set_execution_timer_config(timer(budget));
        limits::install(&mut engine)?;
        for f in files {
            if f.name.ends_with(".rego") {
                engine
                    .add_policy(f.name.clone(), f.text.clone())
                    .map_err(|e| PolicyError::Compile(super::one_line(&e)))?;
            } else {
                engine
                    .add_data(data_document(f)?)
                    .map_err(|e| PolicyError::Data {
                        file: f.name.clone(),
                        message: super::one_line(&e),
                    })?;
            }
        }
        // Analysis (unsafe variables, conflicting rules, unknown functions)
        // happens on first evaluation; do it now so a bad bundle is refused
        // at load, not on the first connection.
        engine
            .eval_query("true".to_owned(), false)
            .map_err(|e| PolicyError::Compile(super::one_line(&e)))?;
        let (has_entry, tests) = inspect(&mut engine);
        if !has_entry {
            return Err(PolicyError::NoEntrypoint);
        }
        let (vm, interpreter_reason) = if !allow_vm {
            (None, Some(format!("VM turned off ({VM_ENV})")))
        } else if let Some(why) = super::conflicts::risk(&mut engine, ENTRY_PACKAGE, ENTRY_RULE) {
            (
                None,
                Some(format!(
                    "{why}; the VM would treat such a conflict as undefined, not as an error"
                )),
            )
        } else {
            match compile_vm(&engine) {
                Ok(vm) => (Some(vm), None),
                Err(why) => (None, Some(why)),
            }
        };
        let reads = super::reads::scan(files);
        Ok(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            version: version_of(files),
            files: files.iter().map(|f| f.name.clone()).collect(),
            tests,
            engine,
            vm,
            interpreter_reason,
            budget,
            max_instructions: MAX_INSTRUCTIONS,
            key_paths: reads.key_paths(),
            reads,
        })
    }

    /// The evaluator decisions run on.
    pub fn path(&self) -> EvalPath {
        if self.vm.is_some() {
            EvalPath::Vm
        } else {
            EvalPath::Interpreter
        }
    }

    /// Whether decisions run on the caller's thread: on the VM, with only
    /// builtins the VM's limits bound. `Err`: why they go to the watchdog's
    /// workers.
    pub fn inline(&self) -> Result<(), String> {
        match (&self.vm, &self.reads.unbounded) {
            (None, _) => Err("on the interpreter".into()),
            (Some(_), Some(why)) => Err(why.clone()),
            (Some(_), None) => Ok(()),
        }
    }

    /// `rvm` or `interpreter (why)`, for logs and `status`.
    pub fn path_description(&self) -> String {
        match (&self.vm, &self.interpreter_reason) {
            (Some(_), _) => match &self.reads.unbounded {
                None => "rvm (bytecode VM)".into(),
                Some(why) => format!("rvm (bytecode VM) on the watchdog's workers ({why})"),
            },
            (None, Some(why)) => format!("interpreter ({why})"),
            (None, None) => "interpreter".into(),
        }
    }

    /// A fresh evaluator for the live path, with the bundle's limits.
    pub fn evaluator(&self) -> Result<Evaluator, String> {
        match &self.vm {
            Some(vm) => self.vm_evaluator(vm).map(Evaluator::Vm),
            None => Ok(Evaluator::Interpreter(Box::new(self.engine.clone()))),
        }
    }

    /// A VM loaded with this bundle's program (benches and the equivalence
    /// tests use it even when the live path is the interpreter).
    pub fn vm_evaluator(&self, vm: &VmProgram) -> Result<Box<RegoVM>, String> {
        let mut machine = Box::new(RegoVM::new());
        machine.load_program(std::sync::Arc::clone(&vm.program));
        machine
            .set_data(vm.data.clone())
            .map_err(|e| format!("cannot load the bundle's data into the VM: {e}"))?;
        machine.set_execution_timer_config(Some(timer(self.budget)));
        machine.set_max_instructions(self.max_instructions);
        // Not strict: comparisons of different types are ordered, as in the
        // interpreter. Builtins are strict anyway: `limits::install_vm`
        // wraps each one to call it strictly and to make its error fatal.
        machine.set_strict_builtin_errors(false);
        Ok(machine)
    }

    /// Evaluates the decision rule on this thread, on the live path (CLI and
    /// tests; the daemon goes through the worker pool).
    pub fn eval_inline(&self, input: Value) -> Result<Value, String> {
        self.evaluator()?.eval(input)
    }

    /// Runs every `test_*` rule, each on a fresh engine with no input. A test
    /// passes only when it evaluates to `true`.
    pub fn run_tests(&self, budget: Duration) -> Vec<TestResult> {
        self.tests
            .iter()
            .map(|name| {
                let mut engine = self.engine.clone();
                engine.set_execution_timer_config(timer(budget));
                let start = Instant::now();
                let result = engine.eval_rule(name.clone());
                let duration = start.elapsed();
                let (passed, error) = match result {
                    Ok(Value::Bool(true)) => (true, None),
                    Ok(_) => (false, None),
                    Err(e) => (false, Some(super::one_line(&e))),
                };
                TestResult {
                    name: name.trim_start_matches("data.").to_owned(),
                    passed,
                    error,
                    duration,
                }
            })
            .collect()
    }
}

/// Clock reads are cheap next to a rule step (or 32 VM instructions); check often.
fn timer(budget: Duration) -> ExecutionTimerConfig {
    ExecutionTimerConfig {
        limit: budget,
        check_interval: NonZeroU32::MIN.saturating_add(31),
    }
}

pub(super) fn vm_disabled() -> bool {
    std::env::var(VM_ENV).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "0" | "off" | "false" | "no" | "interpreter"
        )
    })
}

/// Compiles `data.agentguard.decision` to RVM bytecode, with agentguard's
/// bounded builtins in place of regorus's (the VM resolves builtins from
/// regorus's table, not from the engine's extensions). The error says why
/// the interpreter has to decide instead.
fn compile_vm(engine: &Engine) -> Result<VmProgram, String> {
    // On a clone: compiling prepares the engine for this one entrypoint.
    let mut scratch = engine.clone();
    let entry: Rc<str> = ENTRYPOINT.into();
    let compiled = scratch
        .compile_with_entrypoint(&entry)
        .map_err(|e| format!("cannot compile for the VM: {}", super::one_line(&e)))?;
    let mut program = Compiler::compile_from_policy(&compiled, &[ENTRYPOINT]).map_err(|e| {
        format!(
            "cannot compile for the VM: {}",
            super::one_line(&anyhow::anyhow!("{e}"))
        )
    })?;
    let patched = match std::sync::Arc::get_mut(&mut program) {
        Some(p) => limits::install_vm(p),
        None => {
            let mut owned = (*program).clone();
            let r = limits::install_vm(&mut owned);
            program = std::sync::Arc::new(owned);
            r
        }
    };
    patched.map_err(|e| format!("cannot install builtin limits in the VM: {e}"))?;
    let data = engine.get_data();
    // The same check the VM does on load, so a conflict is refused here.
    program
        .check_rule_data_conflicts(&data)
        .map_err(|e| format!("the VM refuses the bundle's data: {e}"))?;
    Ok(VmProgram { program, data })
}

/// One worker's evaluator of a bundle: a loaded VM or an engine clone.
pub enum Evaluator {
    Vm(Box<RegoVM>),
    Interpreter(Box<Engine>),
}

impl Evaluator {
    /// The value of `data.agentguard.decision` for `input`.
    pub fn eval(&mut self, input: Value) -> Result<Value, String> {
        match self {
            Self::Vm(vm) => {
                vm.set_input(input);
                let _ = limits::take_builtin_error();
                let result = vm.execute().map_err(|e| {
                    // A wrapped builtin's error, made fatal: its own message.
                    limits::take_builtin_error().unwrap_or_else(|| vm_error(&e))
                });
                // Do not keep the input (and whatever the run built) alive
                // until the next decision.
                vm.set_input(Value::Null);
                result
            }
            Self::Interpreter(engine) => {
                engine.set_input(input);
                engine
                    .eval_rule(ENTRYPOINT.to_owned())
                    .map_err(|e| super::one_line(&e))
            }
        }
    }
}

/// VM errors as one line, worded like the interpreter's where it matters
/// to a reader (the time limit).
fn vm_error(e: &regorus::rvm::vm::VmError) -> String {
    super::one_line(&anyhow::anyhow!("{e}"))
}

/// A data file's document, nested under its folder's path (OPA's layout:
/// `a/b/data.json` is `data.a.b`).
fn data_document(f: &SourceFile) -> Result<Value, PolicyError> {
    let parsed = if f.name.ends_with(".json") {
        Value::from_json_str(&f.text)
    } else {
        Value::from_yaml_str(&f.text)
    };
    let mut value = parsed.map_err(|e| PolicyError::Data {
        file: f.name.clone(),
        message: super::one_line(&e),
    })?;
    if !matches!(value, Value::Object(_)) {
        return Err(PolicyError::Data {
            file: f.name.clone(),
            message: "the document must be an object".into(),
        });
    }
    let folders: Vec<&str> = f.name.split('/').collect();
    for folder in folders.iter().rev().skip(1) {
        let mut wrapper = Value::new_object();
        if let Ok(map) = wrapper.as_object_mut() {
            map.insert(Value::from(*folder), value);
        }
        value = wrapper;
    }
    Ok(value)
}

/// Whether `data.agentguard.decision` is declared, and the `test_*` rules.
fn inspect(engine: &mut Engine) -> (bool, Vec<String>) {
    let mut has_entry = false;
    let mut tests = Vec::new();
    for module in engine.get_modules() {
        let package = ref_path(&module.package.refr).join(".");
        for rule in &module.policy {
            let (refr, is_function) = match rule.as_ref() {
                Rule::Spec { head, .. } => match head {
                    RuleHead::Compr { refr, .. } | RuleHead::Set { refr, .. } => (refr, false),
                    RuleHead::Func { refr, .. } => (refr, true),
                },
                Rule::Default { refr, args, .. } => (refr, !args.is_empty()),
            };
            let path = ref_path(refr);
            let Some(first) = path.first() else { continue };
            if package == ENTRY_PACKAGE && first == ENTRY_RULE {
                has_entry = true;
            }
            if path.len() == 1 && first.starts_with("test_") && !is_function {
                let full = format!("data.{package}.{first}");
                if !tests.contains(&full) {
                    tests.push(full);
                }
            }
        }
    }
    (has_entry, tests)
}

/// `a.b.c` → ["a", "b", "c"]; bracketed or computed parts end the path.
pub(super) fn ref_path(expr: &Expr) -> Vec<String> {
    match expr {
        Expr::Var { span, .. } => vec![span.text().to_owned()],
        Expr::RefDot { refr, field, .. } => {
            let mut path = ref_path(refr);
            path.push(field.0.text().to_owned());
            path
        }
        Expr::RefBrack { refr, .. } => ref_path(refr),
        _ => Vec::new(),
    }
}
