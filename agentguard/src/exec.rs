//! `agentguard exec -- CMD`: run a command in a fresh cgroup that is guarded.
//! With a daemon running, the cgroup is made under the agent's (already
//! attached) cgroup; without one, this process loads private copies of the
//! programs and serves the proxy itself for the command's lifetime.

use std::{os::fd::AsRawFd as _, sync::Arc};

use anyhow::{Context as _, bail};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::{
    audit,
    cgroup::{self, Cgroup},
    config::Config,
    control::{self, ControlServer},
    daemon,
    identity::AgentRegistry,
    policy::{self, Reloader},
    proxy::{self, Proxy},
    redirect::{LoadOptions, Redirect, links_dir},
};

pub async fn exec(config: Config, agent: Option<String>, argv: Vec<String>) -> anyhow::Result<i32> {
    let Some((program, args)) = argv.split_first() else {
        bail!("exec needs a command")
    };
    let mount = cgroup::cgroup2_mount()?;
    let me = std::process::id();

    let agent_entry = match &agent {
        Some(name) => Some(
            config
                .agent(name)
                .with_context(|| format!("no agent named `{name}` in the config"))?,
        ),
        None => config.agents.first(),
    };
    let agent_name = agent
        .clone()
        .or_else(|| agent_entry.map(|a| a.name.clone()))
        .unwrap_or_else(|| "exec".into());

    // Keeps the private guard alive until the command is done.
    let mut private = None;
    let cg = match daemon::running(&config.run_dir) {
        Some(info) => {
            let Some(entry) = agent_entry else {
                bail!(
                    "a daemon is running (pid {}); name one of its agents with --agent",
                    info.pid
                )
            };
            let parent = daemon::agent_cgroup(&mount, entry)?;
            let attached = links_dir(&info.bpffs_dir).join(parent.id()?.to_string());
            if !attached.exists() {
                bail!(
                    "agent `{}` ({}) is not attached by the running daemon",
                    entry.name,
                    parent.rel
                );
            }
            info!(daemon_pid = info.pid, agent = %entry.name, "using the running daemon");
            Cgroup::new(&mount, &format!("{}/exec-{me}", parent.rel))?
        }
        None => {
            // Read before anything is attached: a bad secret stops here.
            let mut config = config.clone();
            config.open_credentials()?;
            let (listeners, port) = proxy::bind(0).context("cannot bind the proxy listener")?;
            // Pinned like the daemon's, in a folder of this run: if this
            // process is killed, the links stay and the command's processes
            // (and whatever they left running) stay cut off: fail closed.
            let pin = private_pin_dir(&config, me);
            daemon::ensure_bpffs(&pin)?;
            let loaded = (|| -> anyhow::Result<_> {
                let redirect = Redirect::load(&LoadOptions {
                    proxy_port: port,
                    pin_dir: Some(&pin),
                    config: &config,
                })?;
                let cg = Cgroup::new(&mount, &format!("/agentguard/{agent_name}-{me}"))?;
                cg.create()?;
                Ok((redirect, cg))
            })();
            // Nothing is attached yet: the pinned copies can go.
            let (mut redirect, cg) = match loaded {
                Ok(v) => v,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&pin);
                    return Err(e);
                }
            };
            if let Err(e) = redirect.attach(&cg) {
                let _ = cg.kill_and_remove();
                let _ = std::fs::remove_dir_all(&pin);
                return Err(e.into());
            }
            let agents = Arc::new(AgentRegistry::default());
            agents.register(cg.id()?, &agent_name);
            let state_dir = audit::writable_state_dir(&config);
            let (recorder, audit_writer) =
                match audit::open(&state_dir, &config, audit::OpenOptions::default()) {
                    Ok(opened) => opened,
                    Err(e) => {
                        let _ = cg.kill_and_remove();
                        let _ = std::fs::remove_dir_all(&pin);
                        return Err(anyhow::Error::new(e).context("cannot open the audit log"));
                    }
                };
            // No folder: the built-in "configured targets only" policy.
            let policy = policy::engine_for(&config.policy_dir, None, true);
            let reloader = Reloader::spawn(Arc::clone(&policy), false);
            let approvals = Arc::new(crate::approvals::Approvals::in_memory(
                std::time::Duration::from_secs(config.approval_timeout_secs),
                config.approval_command.clone(),
                config.masker.0.clone(),
            ));
            // Holds are answered here as through the daemon's socket
            // (`agentguard approvals|approve|deny` find it under run_dir).
            let socket = control::exec_socket(&config.run_dir, me);
            let control_listener = match control::bind(&socket) {
                Ok(l) => l,
                Err(e) => {
                    let _ = cg.kill_and_remove();
                    let _ = std::fs::remove_dir_all(&pin);
                    return Err(e);
                }
            };
            let config = Arc::new(config.clone());
            let control = Arc::new(ControlServer {
                config: Arc::clone(&config),
                socket: socket.clone(),
                approvals: Arc::clone(&approvals),
                policy: Arc::clone(&policy),
                recorder: recorder.clone(),
                port,
                started: std::time::Instant::now(),
            });
            let proxy = Arc::new(Proxy::new(
                Arc::new(redirect),
                config,
                policy,
                agents,
                port,
                recorder,
                Arc::clone(&approvals),
            ));
            let (stop_tx, stop_rx) = watch::channel(false);
            let task = tokio::spawn(Arc::clone(&proxy).serve(listeners, stop_rx.clone()));
            tokio::spawn(control.serve(control_listener, stop_rx));
            info!(port, cgroup = %cg.rel, control = %socket.display(), "no daemon running: guarding in-process");
            private = Some(Private {
                stop: stop_tx,
                task,
                _reloader: reloader,
                proxy,
                approvals,
                audit_writer,
                socket,
            });
            cg
        }
    };
    cg.create()?;

    let result = run_child(&cg, program, args).await;
    if let Err(e) = cg.kill_and_remove() {
        warn!("could not remove {}: {e}", cg.rel);
    }
    if let Some(p) = private {
        let _ = std::fs::remove_file(&p.socket);
        let _ = p.stop.send(true);
        let _ = p.task.await;
        // Nobody can answer now: each hold gets its refusal and record.
        p.approvals.deny_all();
        // The command's connections are closing: let their last records in.
        p.proxy.wait_idle(std::time::Duration::from_secs(2)).await;
        p.audit_writer.close().await;
        // The cgroup is gone, so its links are detached; drop the pins.
        let pin = private_pin_dir(&config, me);
        if let Err(e) = std::fs::remove_dir_all(&pin) {
            warn!("could not remove {}: {e}", pin.display());
        }
    }
    result
}

/// What a daemon-less exec keeps alive until its command is done.
struct Private {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    _reloader: Reloader,
    proxy: Arc<Proxy>,
    approvals: Arc<crate::approvals::Approvals>,
    audit_writer: audit::AuditWriter,
    socket: std::path::PathBuf,
}

/// Beside the daemon's bpffs folder: /sys/fs/bpf/agentguard-exec-PID.
pub fn private_pin_dir(config: &Config, pid: u32) -> std::path::PathBuf {
    let name = config
        .bpffs_dir
        .file_name()
        .map_or_else(|| "agentguard".into(), |n| n.to_string_lossy().into_owned());
    config
        .bpffs_dir
        .with_file_name(format!("{name}-exec-{pid}"))
}

async fn run_child(cg: &Cgroup, program: &str, args: &[String]) -> anyhow::Result<i32> {
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(cg.procs_path())
        .with_context(|| format!("cannot open {}", cg.procs_path().display()))?;
    let procs_fd = procs.as_raw_fd();
    let filter = crate::sandbox::filter()?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args);
    // SAFETY: only umask(2), write(2), seccomp(2) and prctl(2) between fork and exec,
    // on an fd and a filter made before the fork. The child joins the cgroup
    // and takes the filter before it runs a single instruction of the
    // command, so nothing it does escapes the guard.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(crate::perms::original_umask());
            let n = libc::write(procs_fd, b"0".as_ptr().cast(), 1);
            if n != 1 {
                return Err(std::io::Error::last_os_error());
            }
            crate::sandbox::install(&filter)
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    drop(procs);
    let pid = child.id().unwrap_or(0) as libc::pid_t;
    debug!(pid, cgroup = %cg.rel, "command started");

    use tokio::signal::unix::{SignalKind, signal};
    let kinds = [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
        SignalKind::quit(),
        SignalKind::user_defined1(),
        SignalKind::user_defined2(),
    ];
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<i32>();
    for kind in kinds {
        if let Ok(mut s) = signal(kind) {
            let tx = tx.clone();
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    if tx.send(kind.as_raw_value()).is_err() {
                        break;
                    }
                }
            });
        }
    }
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            Some(sig) = rx.recv() => {
                // SAFETY: kill(2) on our own child.
                unsafe { libc::kill(pid, sig) };
            }
        }
    };
    use std::os::unix::process::ExitStatusExt as _;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}
