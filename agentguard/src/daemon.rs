//! `agentguard run`: the long-lived guard. Pins its programs, attaches the
//! configured agents, serves the proxy. Exiting leaves the programs attached,
//! so agents' connects are refused until it is back (fail closed).

use std::{
    fs,
    io::Write as _,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::info;

use crate::{
    approvals::{self, Approvals},
    audit,
    cgroup::{self, Cgroup},
    config::Config,
    control::{self, ControlServer},
    identity::AgentRegistry,
    policy::{self, Reloader},
    proxy::{self, Proxy},
    redirect::{LoadOptions, Redirect},
};

const LOCK_FILE: &str = "agentguard.lock";
const INFO_FILE: &str = "daemon.json";

/// Written to run_dir once the listener is up; read by `status` and `exec`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub pid: u32,
    pub port: u16,
    pub bpffs_dir: PathBuf,
}

/// The daemon's lock: held (flock) for the daemon's whole life, so a dead
/// daemon never looks alive.
pub struct Lock {
    _file: fs::File,
}

impl Lock {
    pub fn try_acquire(run_dir: &Path) -> anyhow::Result<Option<Self>> {
        fs::create_dir_all(run_dir)
            .with_context(|| format!("cannot create run_dir {}", run_dir.display()))?;
        let path = run_dir.join(LOCK_FILE);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: flock on an fd we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        Ok((rc == 0).then_some(Self { _file: file }))
    }
}

/// The running daemon's info, if one holds the lock.
pub fn running(run_dir: &Path) -> Option<DaemonInfo> {
    if !run_dir.join(LOCK_FILE).exists() {
        return None;
    }
    match Lock::try_acquire(run_dir) {
        Ok(Some(_free)) => None,
        Ok(None) => fs::read(run_dir.join(INFO_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok()),
        Err(_) => None,
    }
}

pub fn ensure_bpffs(dir: &Path) -> anyhow::Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let on_bpffs = mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, mnt, ty) = (f.next(), f.next(), f.next());
        ty == Some("bpf") && mnt.is_some_and(|m| dir.starts_with(m))
    });
    if on_bpffs {
        return Ok(());
    }
    let target = Path::new("/sys/fs/bpf");
    if !dir.starts_with(target) {
        bail!(
            "{} is not on a bpffs mount; mount one (mount -t bpf bpf DIR) or set bpffs_dir",
            dir.display()
        );
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(target)
        .status()?;
    if !status.success() {
        bail!("cannot mount bpffs at {}", target.display());
    }
    Ok(())
}

/// The cgroup an agent entry names.
pub fn agent_cgroup(mount: &Path, agent: &crate::config::Agent) -> anyhow::Result<Cgroup> {
    let rel = match (&agent.cgroup, &agent.unit) {
        (Some(c), _) => c.clone(),
        (None, Some(u)) => cgroup::unit_cgroup(u)?,
        (None, None) => bail!("agent {} has neither cgroup nor unit", agent.name),
    };
    Ok(Cgroup::new(mount, &rel)?)
}

/// Each guarded connection holds two descriptors (agent side, upstream), so
/// the soft limit service managers usually give (1024) would cap the guard
/// near 500 connections; the hard limit is ours to take.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit(2) with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= lim.rlim_max {
            return;
        }
        let soft = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
            info!(
                from = soft,
                to = lim.rlim_max,
                "raised the open-files limit"
            );
        } else {
            tracing::warn!(
                limit = soft,
                "cannot raise the open-files limit: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

pub async fn run(mut config: Config) -> anyhow::Result<()> {
    raise_fd_limit();
    // Before anything else: the guard does not start with a secret it
    // cannot use (missing, or readable by others).
    config.open_credentials()?;
    let Some(_lock) = Lock::try_acquire(&config.run_dir)? else {
        bail!(
            "another agentguard daemon holds {}",
            config.run_dir.join(LOCK_FILE).display()
        );
    };
    // Before daemon.json exists: `policy reload` signals the pid in it, and
    // SIGHUP's default action would end us.
    let policy = policy::engine_for(
        &config.policy_dir,
        Some(config.run_dir.join(policy::STATE_FILE)),
        false,
    );
    let _reloader = Reloader::spawn(Arc::clone(&policy), true);
    ensure_bpffs(&config.bpffs_dir)?;
    crate::perms::secure_state_dir(&config.state_dir)
        .with_context(|| format!("cannot secure state_dir {}", config.state_dir.display()))?;
    // Before anything is served: a guard that cannot record does not start.
    let (recorder, audit_writer) = audit::open(
        &config.state_dir,
        &config,
        audit::OpenOptions {
            stats_file: Some(audit::cli::stats_file(&config.run_dir)),
            ..Default::default()
        },
    )
    .context("cannot open the audit log")?;
    let mount = cgroup::cgroup2_mount()?;
    // Listen first: from the moment the programs are refreshed, connects
    // arrive here.
    let (listeners, port) = proxy::bind(config.listener.port)
        .with_context(|| format!("cannot listen on port {}", config.listener.port))?;
    let mut redirect = Redirect::load(&LoadOptions {
        proxy_port: port,
        pin_dir: Some(&config.bpffs_dir),
        config: &config,
    })?;
    let (approvals, abandoned) = Approvals::open(
        &config.state_dir,
        std::time::Duration::from_secs(config.approval_timeout_secs),
        config.approval_command.clone(),
        config.masker.0.clone(),
    );
    let approvals = Arc::new(approvals);
    approvals::audit_abandoned(&recorder, abandoned).await;
    let control_listener = control::bind(&config.control_socket())?;
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for metrics on {addr}"))?,
        ),
        None => None,
    };
    let agents = Arc::new(AgentRegistry::default());
    for agent in &config.agents {
        let cg = agent_cgroup(&mount, agent)?;
        cg.create()?;
        redirect.attach(&cg)?;
        agents.register(cg.id()?, &agent.name);
    }
    let info = DaemonInfo {
        pid: std::process::id(),
        port,
        bpffs_dir: config.bpffs_dir.clone(),
    };
    let info_path = config.run_dir.join(INFO_FILE);
    let mut f = fs::File::create(&info_path)
        .with_context(|| format!("cannot write {}", info_path.display()))?;
    f.write_all(&serde_json::to_vec(&info)?)?;
    info!(
        port,
        agents = config.agents.len(),
        targets = config.targets.len(),
        "agentguard daemon ready"
    );

    let config = Arc::new(config);
    let control = Arc::new(ControlServer {
        config: Arc::clone(&config),
        socket: config.control_socket(),
        approvals: Arc::clone(&approvals),
        policy: Arc::clone(&policy),
        recorder: recorder.clone(),
        port,
        started: std::time::Instant::now(),
    });
    let proxy = Arc::new(Proxy::new(
        Arc::new(redirect),
        Arc::clone(&config),
        policy,
        agents,
        port,
        recorder,
        Arc::clone(&approvals),
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let serving = tokio::spawn(Arc::clone(&proxy).serve(listeners, stop_rx.clone()));
    tokio::spawn(Arc::clone(&control).serve(control_listener, stop_rx.clone()));
    if let Some(listener) = metrics_listener {
        tokio::spawn(control::serve_metrics(
            Arc::clone(&control),
            listener,
            stop_rx,
        ));
    }
    // Type=notify: systemd starts dependent units only now. Outside systemd
    // there is no NOTIFY_SOCKET and this does nothing.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    wait_for_stop_signal().await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    info!("stopping; attached cgroups stay guarded (connections refused) until the daemon is back");
    let _ = stop_tx.send(true);
    let _ = serving.await;
    approvals.deny_all();
    proxy.wait_idle(std::time::Duration::from_secs(2)).await;
    audit_writer.close().await;
    let _ = fs::remove_file(&info_path);
    let _ = fs::remove_file(config.control_socket());
    let _ = fs::remove_file(audit::cli::stats_file(&config.run_dir));
    let _ = fs::remove_file(config.run_dir.join(policy::STATE_FILE));
    Ok(())
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
