//! File modes of what agentguard keeps: the audit database and journals
//! (identities, SQL text), approvals.json and the CA key are for root and
//! the `agentguard` group, never for every local user — whatever umask the
//! process was started with.
//!
//! Two parts: a umask set at start for everything agentguard creates
//! (redb opens its file itself, so a mode passed per file is not enough),
//! given back to commands `exec` runs; and a check of the state folder on
//! open that narrows what an earlier run (or a hand) left too open, and
//! says so.

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::Path,
    sync::atomic::{AtomicU32, Ordering},
};

use tracing::warn;

/// What a created file may never allow: group write, anything for others.
/// Files come out at most 0640, folders 0750.
const UMASK: libc::mode_t = 0o027;

/// The umask the process started with, for the commands it runs.
static ORIGINAL: AtomicU32 = AtomicU32::new(0o022);

/// Narrows the process umask; call once at start, before any file is made.
pub fn restrict_umask() {
    // SAFETY: umask has no preconditions and cannot fail.
    let old = unsafe { libc::umask(UMASK) };
    ORIGINAL.store(old, Ordering::Relaxed);
    // A stricter umask (0077) stays as strict.
    // SAFETY: as above.
    unsafe { libc::umask(old | UMASK) };
}

/// The umask a command `exec` runs should have (the one agentguard was
/// started with). Async-signal-safe: read in `pre_exec`.
pub fn original_umask() -> libc::mode_t {
    ORIGINAL.load(Ordering::Relaxed)
}

/// Creates `dir` (0750) if missing, and narrows the modes of it and of
/// what is in it (two levels: journals, ca) to folders 0750 and files 0640
/// at most. Returns what it changed, each also logged as a warning.
pub fn secure_state_dir(dir: &Path) -> io::Result<Vec<String>> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)?;
    let mut fixed = Vec::new();
    narrow(dir, 2, &mut fixed)?;
    for line in &fixed {
        warn!("state_dir: {line}");
    }
    Ok(fixed)
}

fn narrow(path: &Path, depth: u32, fixed: &mut Vec<String>) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode() & 0o7777;
    let allowed = if meta.is_dir() { 0o750 } else { 0o640 };
    let narrowed = mode & allowed;
    if narrowed != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(narrowed))?;
        fixed.push(format!(
            "{} was mode {mode:04o}, readable or writable beyond root and its group; now {narrowed:04o}",
            path.display()
        ));
    }
    if meta.is_dir() && depth > 0 {
        for entry in fs::read_dir(path)? {
            narrow(&entry?.path(), depth - 1, fixed)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_state_dir_is_narrowed_and_reported() {
        let dir = std::env::temp_dir().join(format!("agentguard-perms-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("journal")).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        fs::write(dir.join("agentguard.redb"), b"x").unwrap();
        fs::set_permissions(
            dir.join("agentguard.redb"),
            fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        fs::write(dir.join("journal/1.log"), b"x").unwrap();
        fs::set_permissions(dir.join("journal/1.log"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(dir.join("key"), b"x").unwrap();
        fs::set_permissions(dir.join("key"), fs::Permissions::from_mode(0o600)).unwrap();

        let fixed = secure_state_dir(&dir).unwrap();
        let mode = |p: &str| fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(""), 0o750);
        assert_eq!(mode("agentguard.redb"), 0o640);
        assert_eq!(mode("journal/1.log"), 0o640);
        assert_eq!(mode("key"), 0o600, "a stricter mode is kept");
        assert_eq!(
            fixed.len(),
            4,
            "folder, journal folder, two files: {fixed:?}"
        );
        assert!(
            fixed.iter().any(|l| l.contains("was mode 0666")),
            "{fixed:?}"
        );
        assert!(
            secure_state_dir(&dir).unwrap().is_empty(),
            "second run: nothing to fix"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
