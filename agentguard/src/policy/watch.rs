//! Live reload: a file watcher on the policy folder (debounced, so an editor's
//! write-rename-chmod burst is one reload) and, for the daemon, SIGHUP —
//! which is also what `agentguard policy reload` sends.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::warn;

use super::PolicyEngine;

/// Quiet time after the last file event before reloading.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Keeps the watcher and the reload tasks alive; dropping it stops them.
pub struct Reloader {
    _watcher: Option<Arc<Mutex<RecommendedWatcher>>>,
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
            let (tx, rx) = mpsc::unbounded_channel();
            let watcher =
                notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                    let relevant = match event {
                        Ok(e) => !matches!(e.kind, EventKind::Access(_)),
                        // Overflowed queue and the like: better a reload too many.
                        Err(_) => true,
                    };
                    if relevant {
                        let _ = tx.send(());
                    }
                });
            match watcher {
                Ok(w) => {
                    let w = Arc::new(Mutex::new(w));
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
    watcher: Arc<Mutex<RecommendedWatcher>>,
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
/// replacing the folder itself is noticed.
fn rewatch(watcher: &Mutex<RecommendedWatcher>, dir: &Path, parent: &Path, first: bool) {
    let mut w = watcher.lock().unwrap_or_else(|p| p.into_inner());
    if first && let Err(e) = w.watch(parent, RecursiveMode::NonRecursive) {
        warn!("cannot watch {}: {e}", parent.display());
    }
    let _ = w.unwatch(dir);
    if dir.exists()
        && let Err(e) = w.watch(dir, RecursiveMode::Recursive)
    {
        warn!("cannot watch {}: {e}", dir.display());
    }
}

fn parent_of(dir: &Path) -> PathBuf {
    let dir = super::bundle::canonical(dir);
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}
