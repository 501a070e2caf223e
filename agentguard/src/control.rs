//! The control socket: a small HTTP/JSON API on a unix socket (default
//! `/run/agentguard/agentguard.sock`) that the CLI uses to list and answer
//! approvals, reload policy, read status and metrics.
//!
//! Who may do what comes from the peer's credentials, never from anything
//! it sends: root and the group `agentguard` may read; root and the group
//! `agentguard-approvers` may also answer approvals and reload. A process
//! that agentguard guards (our connect program runs for its cgroup) is
//! refused everything whatever its uid, so an agent cannot approve its own
//! request.

use std::{
    convert::Infallible,
    fs, io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::PermissionsExt as _,
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::{
    net::{UnixListener, UnixStream},
    sync::watch,
};
use tracing::{debug, info, warn};

use crate::{
    approvals::{Approvals, Approver, Verdict},
    audit::Recorder,
    config::Config,
    metrics,
    policy::PolicyEngine,
};

/// May read status, approvals and metrics.
pub const READ_GROUP: &str = "agentguard";
/// May also approve, deny and reload.
pub const APPROVE_GROUP: &str = "agentguard-approvers";

pub struct ControlServer {
    pub config: Arc<Config>,
    /// Where this server listens (the daemon's socket, or an exec's).
    pub socket: PathBuf,
    pub approvals: Arc<Approvals>,
    pub policy: Arc<PolicyEngine>,
    pub recorder: Recorder,
    pub port: u16,
    pub started: Instant,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    Read,
    Approve,
}

/// The peer, as the kernel describes it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub uid: u32,
    pub pid: Option<u32>,
    pub user: Option<String>,
    /// Supplementary and primary groups of the calling process.
    pub groups: Vec<u32>,
    /// Set when the caller must be refused whatever it asks: it runs under
    /// our redirect, or we could not tell whether it does.
    pub agent: Option<String>,
}

/// Binds the socket: stale file replaced (the daemon lock says no other
/// daemon owns it), mode 0660, group `agentguard` when that group exists.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    match fs::remove_file(path) {
        Ok(()) => debug!(path = %path.display(), "removed a stale control socket"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot replace {}", path.display())),
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot bind the control socket {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot chmod {}", path.display()))?;
    match nix::unistd::Group::from_name(READ_GROUP) {
        Ok(Some(group)) => {
            std::os::unix::fs::chown(path, None, Some(group.gid.as_raw())).with_context(|| {
                format!("cannot chown {} to group {READ_GROUP}", path.display())
            })?;
        }
        _ => info!(
            path = %path.display(),
            "no group `{READ_GROUP}`: the control socket is root-only (`cargo xtask install` creates the groups)"
        ),
    }
    Ok(listener)
}

impl ControlServer {
    pub async fn serve(self: Arc<Self>, listener: UnixListener, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let this = Arc::clone(&self);
                        tokio::spawn(async move { this.connection(stream).await });
                    }
                    Err(e) => {
                        warn!("control socket accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }

    async fn connection(self: Arc<Self>, stream: UnixStream) {
        let caller = match identify(&stream, &self.config) {
            Ok(c) => c,
            Err(e) => {
                warn!("control socket: cannot identify the caller: {e}");
                return;
            }
        };
        let service = hyper::service::service_fn(move |req| {
            let this = Arc::clone(&self);
            let caller = caller.clone();
            async move { Ok::<_, Infallible>(this.handle(&caller, req).await) }
        });
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await
        {
            debug!("control connection: {e}");
        }
    }

    async fn handle(&self, caller: &Caller, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let need = match (&method, segments.as_slice()) {
            (&Method::POST, _) => Need::Approve,
            _ => Need::Read,
        };
        if let Err(reason) = authorize(caller, need) {
            warn!(uid = caller.uid, pid = caller.pid, %method, path, "control socket: {reason}");
            return error(StatusCode::FORBIDDEN, &reason);
        }
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("cannot read body: {e}")),
        };
        match (&method, segments.as_slice()) {
            (&Method::GET, ["metrics"]) => metrics_response(&self.scrape()),
            (&Method::GET, ["v1", "status"]) => ok(self.status()),
            (&Method::GET, ["v1", "approvals"]) => ok(json!({
                "pending": self.approvals.pending(),
                "grants": self.approvals.grants(),
            })),
            (&Method::POST, ["v1", "approvals", id, verb @ ("approve" | "deny")]) => {
                self.answer(caller, id, verb, &body)
            }
            (&Method::POST, ["v1", "policy", "reload"]) => {
                let policy = Arc::clone(&self.policy);
                match tokio::task::spawn_blocking(move || policy.reload()).await {
                    Ok(Ok(outcome)) => {
                        info!(
                            uid = caller.uid,
                            "policy reloaded through the control socket"
                        );
                        ok(
                            json!({ "outcome": format!("{outcome:?}"), "state": self.policy.state() }),
                        )
                    }
                    Ok(Err(e)) => error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        &format!("reload failed; the last good policy stays live: {e}"),
                    ),
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                }
            }
            _ => error(
                StatusCode::NOT_FOUND,
                &format!("no such endpoint: {method} {path}"),
            ),
        }
    }

    fn answer(&self, caller: &Caller, id: &str, verb: &str, body: &[u8]) -> Response<Full<Bytes>> {
        #[derive(Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        struct Answer {
            reason: Option<String>,
            for_secs: Option<u64>,
        }
        let answer: Answer = if body.is_empty() {
            Answer::default()
        } else {
            match serde_json::from_slice(body) {
                Ok(a) => a,
                Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad request body: {e}")),
            }
        };
        let by = Approver {
            uid: caller.uid,
            user: caller.user.clone(),
        };
        let grant = answer.for_secs.map(Duration::from_secs);
        let verdict = if verb == "approve" {
            Verdict::Approve {
                by: by.clone(),
                reason: answer.reason,
            }
        } else {
            if grant.is_some() {
                return error(StatusCode::BAD_REQUEST, "--for goes with approve, not deny");
            }
            Verdict::Deny {
                by: by.clone(),
                reason: answer.reason,
            }
        };
        match self.approvals.answer(id, verdict, grant) {
            Ok(info) => {
                info!(approval = id, approver = %by, verb, "answered through the control socket");
                ok(
                    json!({ "id": id, "answer": verb, "by": by.to_string(), "request": info.request,
                    "granted_for_secs": grant.map(|d| d.as_secs()) }),
                )
            }
            Err(e) => error(StatusCode::NOT_FOUND, &e.to_string()),
        }
    }

    fn status(&self) -> Value {
        json!({
            "pid": std::process::id(),
            "port": self.port,
            "uptime_secs": self.started.elapsed().as_secs(),
            "control_socket": self.socket,
            "policy": self.policy.state(),
            "audit": self.recorder.stats(),
            "approvals_pending": self.approvals.pending().len(),
            "approval_timeout_secs": self.approvals.timeout().as_secs(),
        })
    }

    /// Fills the gauges that mirror other state, then encodes.
    pub fn scrape(&self) -> String {
        let m = metrics::get();
        m.set_policy_version(self.policy.version().as_deref());
        m.approvals_pending
            .set(self.approvals.pending().len() as i64);
        if let Some(stats) = self.recorder.stats() {
            m.audit_queue_depth.set(stats.queued as i64);
            metrics::Metrics::catch_up(&m.audit_records_written, stats.written);
            metrics::Metrics::catch_up(&m.audit_write_errors, stats.write_errors);
        }
        m.encode()
    }
}

/// Serves `GET /metrics` alone on a loopback TCP port, for a Prometheus
/// scraper (read-only; the address must be loopback, checked in config).
pub async fn serve_metrics(
    server: Arc<ControlServer>,
    listener: tokio::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!("metrics accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let server = Arc::clone(&server);
                async move {
                    Ok::<_, Infallible>(match (req.method(), req.uri().path()) {
                        (&Method::GET, "/metrics") => metrics_response(&server.scrape()),
                        _ => error(StatusCode::NOT_FOUND, "only GET /metrics is served here"),
                    })
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn authorize(caller: &Caller, need: Need) -> Result<(), String> {
    if let Some(why) = &caller.agent {
        return Err(format!(
            "refused: {why}; agents cannot use the control socket"
        ));
    }
    if caller.uid == 0 {
        return Ok(());
    }
    let wanted: &[&str] = match need {
        Need::Read => &[READ_GROUP, APPROVE_GROUP],
        Need::Approve => &[APPROVE_GROUP],
    };
    let member = wanted.iter().any(|name| {
        matches!(nix::unistd::Group::from_name(name), Ok(Some(g)) if caller.groups.contains(&g.gid.as_raw()))
    });
    if member {
        Ok(())
    } else {
        Err(format!(
            "refused: uid {} is neither root nor in the group `{}`",
            caller.uid,
            wanted[wanted.len() - 1]
        ))
    }
}

/// Reads the peer's credentials and decides whether it is an agent. A pidfd
/// (Linux 6.5+) pins the process while its cgroup is read, so a recycled pid
/// cannot lend an agent another process's standing.
fn identify(stream: &UnixStream, config: &Config) -> io::Result<Caller> {
    let cred = stream.peer_cred()?;
    let uid = cred.uid();
    let pidfd = peer_pidfd(stream);
    let pid = match &pidfd {
        Some(fd) => pid_of_pidfd(fd).or(cred.pid().and_then(|p| u32::try_from(p).ok())),
        None => cred.pid().and_then(|p| u32::try_from(p).ok()),
    };
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name);
    let Some(pid) = pid else {
        return Ok(Caller {
            uid,
            pid: None,
            user,
            groups: Vec::new(),
            agent: Some("the caller's pid is unknown".into()),
        });
    };
    let groups = process_groups(pid).unwrap_or_else(|| vec![cred.gid()]);
    let agent = match agent_check(pid, config) {
        Ok(None) => None,
        Ok(Some(cgroup)) => Some(format!(
            "the caller (pid {pid}) runs in the guarded cgroup {cgroup}"
        )),
        Err(e) => Some(format!("cannot tell whether pid {pid} is an agent ({e})")),
    };
    // The process we looked at must still be the peer: if it is gone, its pid
    // may already name another process.
    let agent = match &pidfd {
        Some(fd) if !pidfd_alive(fd) => Some(format!("the caller (pid {pid}) exited")),
        _ => agent,
    };
    Ok(Caller {
        uid,
        pid: Some(pid),
        user,
        groups,
        agent,
    })
}

/// `Some(path)` when our redirect runs for the process's cgroup.
fn agent_check(pid: u32, config: &Config) -> anyhow::Result<Option<String>> {
    let Some(rel) = crate::cgroup::path_of_pid(pid) else {
        bail!("cannot read /proc/{pid}/cgroup");
    };
    let mount = crate::cgroup::cgroup2_mount()?;
    let dir: PathBuf = mount.join(rel.trim_start_matches('/'));
    if crate::redirect::guarded_by_us(&config.bpffs_dir, &dir)
        .with_context(|| format!("cannot query the programs of {}", dir.display()))?
    {
        Ok(Some(rel))
    } else {
        Ok(None)
    }
}

fn process_groups(pid: u32) -> Option<Vec<u32>> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut groups = Vec::new();
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("Groups:") {
            groups.extend(
                rest.split_whitespace()
                    .filter_map(|g| g.parse::<u32>().ok()),
            );
        } else if let Some(rest) = line.strip_prefix("Gid:") {
            // Real, effective, saved, fs: the effective one.
            groups.extend(
                rest.split_whitespace()
                    .nth(1)
                    .and_then(|g| g.parse::<u32>().ok()),
            );
        }
    }
    Some(groups)
}

fn peer_pidfd(stream: &UnixStream) -> Option<OwnedFd> {
    const SO_PEERPIDFD: libc::c_int = 77;
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `fd`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            std::ptr::from_mut(&mut fd).cast(),
            &mut len,
        )
    };
    // SAFETY: on success the kernel gave us a new fd that nothing else owns.
    (rc == 0 && fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pid_of_pidfd(fd: &OwnedFd) -> Option<u32> {
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|p| p.trim().parse::<i64>().ok())
        .and_then(|p| u32::try_from(p).ok())
}

fn pidfd_alive(fd: &OwnedFd) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn ok(value: Value) -> Response<Full<Bytes>> {
    json_response(StatusCode::OK, &value)
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({ "error": message }))
}

fn json_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn metrics_response(text: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(text.to_owned())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    resp
}

/// Where an `agentguard exec` with no daemon serves its own control socket,
/// one per exec: `<run_dir>/exec/<pid>.sock`.
pub fn exec_socket(run_dir: &Path, pid: u32) -> PathBuf {
    run_dir.join("exec").join(format!("{pid}.sock"))
}

/// The exec sockets present under run_dir (some may be stale: their exec
/// was killed), oldest pid first.
pub fn exec_sockets(run_dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir(run_dir.join("exec"))
        .map(|it| {
            it.flatten()
                .filter_map(|e| {
                    let name = e.file_name();
                    let pid = name.to_str()?.strip_suffix(".sock")?.parse().ok()?;
                    Some((pid, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.into_iter().map(|(_, p)| p).collect()
}

/// Every control socket that answers: the daemon's, then each exec's. A
/// hold lives in exactly one of them. None: the first real error (say,
/// permission denied), else the daemon socket's own "not listening".
async fn live_sockets(config: &Config) -> anyhow::Result<Vec<(PathBuf, UnixStream)>> {
    let mut live = Vec::new();
    let mut refused = None;
    for path in std::iter::once(config.control_socket()).chain(exec_sockets(&config.run_dir)) {
        match UnixStream::connect(&path).await {
            Ok(s) => live.push((path, s)),
            // Not there, or its exec was killed.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) => {}
            Err(_) => {
                if refused.is_none() {
                    refused = Some(path);
                }
            }
        }
    }
    if live.is_empty() {
        let path = refused.unwrap_or_else(|| config.control_socket());
        connect(&path).await?;
        bail!("the control socket {} went away", path.display());
    }
    Ok(live)
}

/// `GET /v1/approvals` from the daemon and every exec, merged.
pub async fn list_approvals(config: &Config) -> anyhow::Result<Value> {
    let mut pending = Vec::new();
    let mut grants = Vec::new();
    for (_, list) in approval_lists(config).await? {
        pending.extend(list["pending"].as_array().cloned().unwrap_or_default());
        grants.extend(list["grants"].as_array().cloned().unwrap_or_default());
    }
    Ok(json!({ "pending": pending, "grants": grants }))
}

async fn approval_lists(config: &Config) -> anyhow::Result<Vec<(PathBuf, Value)>> {
    let mut lists = Vec::new();
    for (path, stream) in live_sockets(config).await? {
        let list = request_json(stream, Method::GET, "/v1/approvals", None).await?;
        lists.push((path, list));
    }
    Ok(lists)
}

/// Approves or denies through whichever socket (daemon or exec) holds `id`.
pub async fn answer(config: &Config, id: &str, verb: &str, body: Value) -> anyhow::Result<Value> {
    let lists = approval_lists(config).await?;
    let holder = lists
        .iter()
        .find(|(_, list)| {
            list["pending"]
                .as_array()
                .is_some_and(|p| p.iter().any(|h| h["id"] == id))
        })
        // Nobody holds it: the first socket says so in its own words.
        .or(lists.first())
        .map(|(path, _)| path.clone());
    let Some(socket) = holder else {
        bail!("no control socket answered")
    };
    call_json(
        &socket,
        Method::POST,
        &format!("/v1/approvals/{id}/{verb}"),
        Some(body),
    )
    .await
}

async fn connect(socket: &Path) -> anyhow::Result<UnixStream> {
    match UnixStream::connect(socket).await {
        Ok(s) => Ok(s),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            bail!(
                "no agentguard daemon is listening on {} ({e}), and no `agentguard exec` is guarding a command; start the daemon (`systemctl start agentguard` or `agentguard run`), or point --config at its config",
                socket.display()
            )
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => bail!(
            "permission denied on {}: run as root, or join the group `{READ_GROUP}` (approvers: also `{APPROVE_GROUP}`)",
            socket.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot connect to {}", socket.display())),
    }
}

/// The CLI side: one request to the daemon's control socket. Errors say
/// what to do next.
pub async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    request(connect(socket).await?, method, path, body).await
}

async fn request(
    stream: UnixStream,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("control socket handshake failed")?;
    tokio::spawn(conn);
    let body = body.map(|v| v.to_string()).unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "agentguard")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let resp = sender
        .send_request(req)
        .await
        .context("the daemon closed the control connection")?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, bytes))
}

/// [`call`], expecting JSON; a non-2xx answer becomes the error it carries.
pub async fn call_json(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    request_json(connect(socket).await?, method, path, body).await
}

async fn request_json(
    stream: UnixStream,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let (status, bytes) = request(stream, method, path, body).await?;
    let value: Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("the daemon answered {status} with something that is not JSON"))?;
    if !status.is_success() {
        let msg = value["error"].as_str().unwrap_or("(no reason given)");
        bail!("{msg}");
    }
    Ok(value)
}
