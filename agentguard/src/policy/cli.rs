//! `agentguard policy …`, shaped like `opa check` / `opa test` / `opa eval`,
//! plus `reload` for the running daemon.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use regorus::Value;
use serde::Serialize;

use super::{Bundle, TEST_BUDGET, parse_decision};
use crate::{config::Config, daemon};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Compile a policy folder and print its version.
    Check {
        /// Default: --policy, else the config's policy_dir.
        dir: Option<PathBuf>,
    },
    /// Run every `test_*` rule; exit non-zero if any fails.
    Test {
        /// Default: --policy, else the config's policy_dir.
        dir: Option<PathBuf>,
        /// Show each test's duration and why it failed.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Print the decision for an input document (JSON; `-` for stdin).
    Eval {
        #[arg(long)]
        input: PathBuf,
    },
    /// Make the running daemon reload its policy folder now (sends it SIGHUP)
    /// and report the outcome.
    Reload,
}

pub fn run(config: &Config, command: PolicyCommand) -> anyhow::Result<i32> {
    match command {
        PolicyCommand::Check { dir } => check(dir.as_deref().unwrap_or(&config.policy_dir)),
        PolicyCommand::Test { dir, verbose } => {
            test(dir.as_deref().unwrap_or(&config.policy_dir), verbose)
        }
        PolicyCommand::Eval { input } => eval(&config.policy_dir, &input),
        PolicyCommand::Reload => reload(&config.run_dir),
    }
}

fn compile(dir: &Path) -> anyhow::Result<Bundle> {
    Ok(super::compile_dir(dir)?)
}

fn check(dir: &Path) -> anyhow::Result<i32> {
    let bundle = compile(dir)?;
    println!(
        "version: {} ({} files, {} tests) {}",
        bundle.version,
        bundle.files.len(),
        bundle.tests.len(),
        dir.display()
    );
    println!("engine: {}", bundle.path_description());
    match &bundle.reads.uncacheable {
        None => println!(
            "decision cache: on (key: bundle, {})",
            bundle.reads.describe()
        ),
        Some(why) => println!("decision cache: off ({why})"),
    }
    Ok(0)
}

fn test(dir: &Path, verbose: bool) -> anyhow::Result<i32> {
    let bundle = compile(dir)?;
    let results = bundle.run_tests(TEST_BUDGET);
    let mut failed = 0;
    for r in &results {
        let mark = if r.passed { "PASS" } else { "FAIL" };
        if verbose {
            println!("{mark} {} ({:.1?})", r.name, r.duration);
        } else {
            println!("{mark} {}", r.name);
        }
        if !r.passed {
            failed += 1;
            match &r.error {
                Some(e) => println!("  error: {e}"),
                None if verbose => println!("  result was false or undefined"),
                None => {}
            }
        }
    }
    println!("{} passed, {failed} failed", results.len() - failed);
    Ok(i32::from(failed > 0))
}

/// The decision as the daemon would take it (fail closed included), with
/// the bundle version.
#[derive(Serialize)]
struct Printed {
    action: crate::decide::Action,
    reason: String,
    mask: Vec<String>,
    policy_version: String,
}

fn eval(dir: &Path, input: &Path) -> anyhow::Result<i32> {
    let text = if input == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the input from stdin")?;
        s
    } else {
        std::fs::read_to_string(input)
            .with_context(|| format!("cannot read {}", input.display()))?
    };
    let value = Value::from_json_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not JSON: {e:#}", input.display()))?;
    let bundle = compile(dir)?;
    let decision = match bundle.eval_inline(value).and_then(|v| parse_decision(&v)) {
        Ok(v) => Printed {
            action: v.action,
            reason: v.reason,
            mask: v.mask,
            policy_version: bundle.version.clone(),
        },
        Err(cause) => Printed {
            action: crate::decide::Action::Deny,
            reason: format!("agentguard: policy error: {cause}"),
            mask: Vec::new(),
            policy_version: bundle.version.clone(),
        },
    };
    println!("{}", serde_json::to_string_pretty(&decision)?);
    Ok(0)
}

fn reload(run_dir: &Path) -> anyhow::Result<i32> {
    let Some(info) = daemon::running(run_dir) else {
        bail!(
            "no agentguard daemon is running (run_dir {})",
            run_dir.display()
        );
    };
    let before = super::read_state(run_dir).map_or(0, |s| s.attempts);
    let pid = libc::pid_t::try_from(info.pid).context("bad daemon pid")?;
    // SAFETY: kill(2) with a pid read from the daemon's info file, which is
    // only trusted while the daemon holds its lock (checked by `running`).
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        bail!(
            "cannot signal the daemon (pid {pid}): {}",
            std::io::Error::last_os_error()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(state) = super::read_state(run_dir)
            && state.attempts > before
        {
            return Ok(match (&state.last_error, &state.version) {
                (None, Some(v)) => {
                    println!(
                        "reloaded: version {v} ({} files, {} tests)",
                        state.files.len(),
                        state.tests
                    );
                    0
                }
                (Some(e), Some(v)) => {
                    eprintln!("reload FAILED, version {v} stays live: {e}");
                    1
                }
                (Some(e), None) => {
                    eprintln!(
                        "reload FAILED, no valid policy is loaded (everything is denied): {e}"
                    );
                    1
                }
                (None, None) => {
                    eprintln!("reload finished but no policy is loaded");
                    1
                }
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the daemon (pid {pid}) did not report a reload within 10 s")
}
