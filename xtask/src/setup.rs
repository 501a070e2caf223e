//! `cargo xtask setup`: one idempotent command for a fresh machine. The work is
//! in scripts/setup.sh so that it also runs where no Rust toolchain exists yet.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

pub fn run(root: &Path) -> anyhow::Result<()> {
    let script = root.join("scripts/setup.sh");
    if !script.is_file() {
        bail!(
            "{} not found (run from an agentguard checkout)",
            script.display()
        );
    }
    let status = Command::new("bash")
        .arg(&script)
        .current_dir(root)
        .status()
        .context("cannot run bash (is it installed?)")?;
    if !status.success() {
        bail!("scripts/setup.sh failed ({status})");
    }
    Ok(())
}
