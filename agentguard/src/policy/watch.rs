//! Live reload: a file watcher on the policy folder (debounced, so an editor's
//! write-rename-chmod burst is one reload) and, for the daemon, SIGHUP —
//! which is also what `agentguard policy reload` sends.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::warn;

use super::PolicyEngine;

struct Watched {
    watcher: RecommendedWatcher,
    /// (device, inode) of the folder under the recursive watch.
    dir_inode: Option<(u64, u64)>,
}

/// Quiet time after the last file event before reloading.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Keeps the watcher and the reload tasks alive; dropping it stops them.
pub struct Reloader {
    _watcher: Option<Arc<Mutex<Watched>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Reloader {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Reloader {
    /// Must run inside the tokio runtime. With `sighup`, the SIGHUP handler
    /// is installed before this returns (the default action would kill us).
    pub fn spawn(engine: Arc<PolicyEngine>, sighup: bool) -> Self {
        let mut tasks = Vec::new();
        if sighup {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::hangup()) {
                Ok(mut hup) => {
                    let engine = Arc::clone(&engine);
                    tasks.push(tokio::spawn(async move {
                        while hup.recv().await.is_some() {
                            reload(&engine, "SIGHUP").await;
                        }
                    }));
                }
                Err(e) => {
                    warn!("cannot handle SIGHUP, `agentguard policy reload` will not work: {e}")
                }
            }
        }
        let watcher = engine.dir().map(Path::to_owned).and_then(|dir| {
            // Absolute, so event paths (absolute) can be compared with it.
            let dir = std::path::absolute(&dir).unwrap_or(dir);
            let ours = dir.clone();
            let (tx, rx) = mpsc::unbounded_channel();
            let watcher =
                notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                    let relevant = match event {
                        // The parent watch also sees siblings (a log file, the
                        // config): only the folder and what is in it count, or
                        // a reload that logs next to it would loop.
                        Ok(e) => {
                            !matches!(e.kind, EventKind::Access(_))
                                && e.paths.iter().any(|p| p.starts_with(&ours))
                        }
                        // Overflowed queue and the like: better a reload too many.
                        Err(e) => {
                            warn!("policy folder watch: {e}");
                            true
                        }
                    };
                    if relevant {
                        let _ = tx.send(());
                    }
                });
            match watcher {
                Ok(w) => {
                    let w = Arc::new(Mutex::new(Watched {
                        watcher: w,
                        dir_inode: None,
                    }));
                    let parent = parent_of(&dir);
                    rewatch(&w, &dir, &parent, true);
                    tasks.push(tokio::spawn(watch_loop(
                        Arc::clone(&engine),
                        Arc::clone(&w),
                        dir,
                        parent,
                        rx,
                    )));
                    Some(w)
                }
                Err(e) => {
                    warn!(
                        "cannot watch {} for changes (reload with SIGHUP instead): {e}",
                        dir.display()
                    );
                    None
                }
            }
        });
        Self {
            _watcher: watcher,
            tasks,
        }
    }
}

async fn watch_loop(
    engine: Arc<PolicyEngine>,
    watcher: Arc<Mutex<Watched>>,
    dir: PathBuf,
    parent: PathBuf,
    mut rx: mpsc::UnboundedReceiver<()>,
) {
    while rx.recv().await.is_some() {
        loop {
            match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        // The folder may have been created or replaced (rename, ConfigMap
        // swap) since we last looked: watch whatever is there now.
        rewatch(&watcher, &dir, &parent, false);
        reload(&engine, "file change").await;
    }
}

async fn reload(engine: &Arc<PolicyEngine>, why: &'static str) {
    let engine = Arc::clone(engine);
    // Compiling and testing is blocking work; keep it off the proxy's threads.
    if let Err(e) = tokio::task::spawn_blocking(move || engine.reload_logged(why)).await {
        warn!("policy reload task failed: {e}");
    }
}

/// The parent is watched too (non-recursively) so that creating or
/// replacing the folder itself is noticed. The folder's watch is renewed
/// only when the folder is new or another inode: removing a watch queues an
/// event of its own, which would otherwise trigger the next reload.
fn rewatch(watcher: &Mutex<Watched>, dir: &Path, parent: &Path, first: bool) {
    let mut w = watcher.lock().unwrap_or_else(|p| p.into_inner());
    if first && let Err(e) = w.watcher.watch(parent, RecursiveMode::NonRecursive) {
        warn!("cannot watch {}: {e}", parent.display());
    }
    let now = fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()));
    if now == w.dir_inode {
        return;
    }
    if w.dir_inode.take().is_some() {
        let _ = w.watcher.unwatch(dir);
    }
    if now.is_some() {
        match w.watcher.watch(dir, RecursiveMode::Recursive) {
            Ok(()) => w.dir_inode = now,
            Err(e) => warn!("cannot watch {}: {e}", dir.display()),
        }
    }
}

fn parent_of(dir: &Path) -> PathBuf {
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}
