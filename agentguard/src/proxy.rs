//! The transparent proxy: accept → origin record → decision → upstream →
//! copy both ways. One task per connection, each inside a tracing span that
//! names the connection id, agent, identity and original destination.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::watch,
};
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::{
    approvals::Approvals,
    audit::{DecisionRecord, Recorder, RequestSummary, SessionHandle},
    config::{Config, Protocol},
    decide::{Action, Decide, Decision, Input, Request, Target},
    http,
    identity::{AgentRegistry, Identity},
    mysql, net, pg,
    redirect::Redirect,
    redis,
};

pub struct Proxy {
    pub redirect: Arc<Redirect>,
    pub config: Arc<Config>,
    pub decider: Arc<dyn Decide>,
    pub agents: Arc<AgentRegistry>,
    pub cgroup_mount: Option<PathBuf>,
    pub listen_port: u16,
    /// CA, trust store and mask engine of the HTTP guard (built on first use).
    pub http: Arc<http::HttpShared>,
    /// Every decision and session goes here (see audit.rs).
    pub recorder: Recorder,
    /// Requests held for a person's answer (see approvals.rs).
    pub approvals: Arc<Approvals>,
    next_id: AtomicU64,
    active: Arc<AtomicUsize>,
}

/// Binds 127.0.0.1:PORT and [::1]:PORT (the same port on both; port 0 picks
/// one free on both).
pub fn bind(port: u16) -> io::Result<(Vec<TcpListener>, u16)> {
    for _ in 0..16 {
        let v4 = listen(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
        let bound = v4.local_addr()?.port();
        match listen(SocketAddr::from((Ipv6Addr::LOCALHOST, bound))) {
            Ok(v6) => return Ok((vec![v4, v6], bound)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && port == 0 => continue,
            Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => {
                warn!("IPv6 loopback unavailable ({e}); serving IPv4 only");
                return Ok((vec![v4], bound));
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no port free on both 127.0.0.1 and ::1",
    ))
}

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

impl Proxy {
    pub fn new(
        redirect: Arc<Redirect>,
        config: Arc<Config>,
        decider: Arc<dyn Decide>,
        agents: Arc<AgentRegistry>,
        listen_port: u16,
        recorder: Recorder,
        approvals: Arc<Approvals>,
    ) -> Self {
        let http = Arc::new(http::HttpShared::new(
            config.state_dir.clone(),
            config.masker.0.clone(),
        ));
        Self {
            redirect,
            config,
            decider,
            agents,
            cgroup_mount: crate::cgroup::cgroup2_mount().ok(),
            listen_port,
            http,
            recorder,
            approvals,
            next_id: AtomicU64::new(1),
            active: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Waits (at most `timeout`) for connections in flight to finish, so
    /// their last records are queued before the recorder closes.
    pub async fn wait_idle(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.active.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A refusal before any session exists.
    async fn record_refusal(
        &self,
        identity: Option<&Identity>,
        target: Option<&Target>,
        peer: SocketAddr,
        reason: &str,
        accepted: Instant,
    ) {
        let mut record = DecisionRecord::new(
            None,
            identity,
            target,
            RequestSummary::Connect,
            &Decision::deny(reason),
            accepted.elapsed(),
        );
        record.peer = Some(peer.to_string());
        // Already refused: an overloaded recorder changes nothing here.
        let _ = self.recorder.decision(record).await;
    }

    /// Serves until `shutdown` turns true. Errors on one connection never end
    /// the loop.
    pub async fn serve(
        self: Arc<Self>,
        listeners: Vec<TcpListener>,
        shutdown: watch::Receiver<bool>,
    ) {
        let mut tasks = Vec::new();
        if let Some(refusals) = self.redirect.kernel_refusals() {
            tasks.push(tokio::spawn(crate::refusals::audit(
                refusals,
                self.recorder.clone(),
                Arc::clone(&self.config),
                Arc::clone(&self.agents),
                self.cgroup_mount.clone(),
                shutdown.clone(),
            )));
        }
        for listener in listeners {
            let proxy = Arc::clone(&self);
            let mut shutdown = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = shutdown.changed() => break,
                        accepted = listener.accept() => match accepted {
                            Ok((stream, peer)) => {
                                let proxy = Arc::clone(&proxy);
                                tokio::spawn(async move { proxy.handle(stream, peer).await });
                            }
                            // EMFILE and friends: back off instead of spinning.
                            Err(e) => {
                                warn!("accept failed: {e}");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        },
                    }
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    }

    async fn handle(self: Arc<Self>, client: TcpStream, peer: SocketAddr) {
        let accepted = Instant::now();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let _active = Active::new(&self.active);
        // No record: the connection did not come through the hook (a process
        // outside any agent cgroup dialled us, or the record was lost). Never
        // treated as allowed.
        let Some(origin) = self.redirect.take_origin(peer) else {
            const REASON: &str =
                "no origin record (connection did not come through the agentguard hook)";
            warn!(conn = id, %peer, "refused: {REASON}");
            reset(client);
            self.record_refusal(None, None, peer, REASON, accepted)
                .await;
            return;
        };
        let dst = SocketAddr::new(net::from_addr(&origin.dst), origin.dst_port);
        let identity = Identity::resolve(
            &origin,
            &self.config,
            &self.agents,
            self.cgroup_mount.as_deref(),
        );
        let span = info_span!(
            "conn",
            id,
            agent = identity.agent.as_deref().unwrap_or("-"),
            uid = identity.uid,
            pid = identity.pid,
            exe = identity.exe.as_deref().unwrap_or(&identity.comm),
            %dst,
        );
        async move {
            let target = Target::for_destination(&self.config, dst);
            crate::metrics::get().connection(identity.agent.as_deref(), target.protocol.as_str());
            if dst.port() == self.listen_port
                && (dst.ip().is_loopback() || dst.ip().is_unspecified())
            {
                const REASON: &str = "direct connection to the agentguard proxy port";
                warn!("refused: {REASON}");
                reset(client);
                self.record_refusal(Some(&identity), Some(&target), peer, REASON, accepted)
                    .await;
                return;
            }
            let input = Input {
                target,
                identity,
                request: Request::Connect,
            };
            // Held before any byte flows; the client just sees a slow connect.
            let decision =
                crate::pipeline::decide_held(&*self.decider, &self.approvals, &input, None).await;
            let record = DecisionRecord::new(
                None,
                Some(&input.identity),
                Some(&input.target),
                RequestSummary::Connect,
                &decision,
                accepted.elapsed(),
            );
            let session = match decision.action {
                Action::Allow => match self.start_session(&input, record).await {
                    Ok(session) => session,
                    Err(reason) => {
                        warn!(%reason, "denied");
                        reset(client);
                        return;
                    }
                },
                Action::Deny | Action::Approve => {
                    warn!(action = ?decision.action, reason = %decision.reason, "denied");
                    reset(client);
                    let _ = self.recorder.decision(record).await;
                    return;
                }
            };
            let timeout = Duration::from_secs(self.config.listener.connect_timeout_secs);
            let upstream = match tokio::time::timeout(timeout, TcpStream::connect(dst)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    warn!("upstream connect failed: {e}");
                    reset(client);
                    session
                        .end(0, 0, Some(format!("upstream connect failed: {e}")))
                        .await;
                    return;
                }
                Err(_) => {
                    warn!("upstream connect timed out after {timeout:?}");
                    reset(client);
                    session
                        .end(
                            0,
                            0,
                            Some(format!("upstream connect timed out after {timeout:?}")),
                        )
                        .await;
                    return;
                }
            };
            let upstream_local = upstream
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            info!(reason = %decision.reason, %upstream_local, "allowed");
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            match input.target.protocol {
                Protocol::Postgres => {
                    let Some(tls) = self.db_tls(&input, dst, &session).await else {
                        reset(client);
                        return;
                    };
                    let guard = pg::session::PgGuard {
                        credentials: self.config.secrets.for_target(input.target.name.as_deref()),
                        guarded: self.guarded(input, &session),
                        tls,
                        masker: self.config.masker.0.clone(),
                    };
                    let error = match pg::session::run(guard, client, upstream).await {
                        Ok(()) => None,
                        Err(e) => {
                            warn!("postgres session closed: {e}");
                            Some(e.to_string())
                        }
                    };
                    session.end(0, 0, error).await;
                }
                Protocol::Redis => {
                    let guard = redis::session::RedisGuard {
                        guarded: self.guarded(input, &session),
                        masker: self.config.masker.0.clone(),
                    };
                    let error = match redis::session::run(guard, client, upstream).await {
                        Ok(()) => None,
                        Err(e) => {
                            warn!("redis session closed: {e}");
                            Some(e.to_string())
                        }
                    };
                    session.end(0, 0, error).await;
                }
                Protocol::Mysql => {
                    let Some(tls) = self.db_tls(&input, dst, &session).await else {
                        reset(client);
                        return;
                    };
                    let guard = mysql::session::MysqlGuard {
                        credentials: self.config.secrets.for_target(input.target.name.as_deref()),
                        guarded: self.guarded(input, &session),
                        masker: self.config.masker.0.clone(),
                        tls,
                    };
                    let error = match mysql::session::run(guard, client, upstream).await {
                        Ok(()) => None,
                        Err(e) => {
                            warn!("mysql session closed: {e}");
                            Some(e.to_string())
                        }
                    };
                    session.end(0, 0, error).await;
                }
                Protocol::Http | Protocol::Llm | Protocol::K8s => {
                    let found = self.config.target_for(dst).map(|(t, _)| t);
                    let credential = self
                        .config
                        .secrets
                        .for_target(input.target.name.as_deref())
                        .pop();
                    let conn = http::Conn {
                        shared: Arc::clone(&self.http),
                        guarded: self.guarded(input, &session),
                        tls: found.map(|t| t.tls).unwrap_or_default(),
                        ca_file: found.and_then(|t| t.ca_file.clone()),
                        connect_timeout: timeout,
                        dst,
                        sni: None,
                        credential,
                    };
                    let error = match http::run(conn, client, upstream).await {
                        Ok(()) => None,
                        Err(e) => {
                            warn!("http session closed: {e}");
                            Some(e.to_string())
                        }
                    };
                    session.end(0, 0, error).await;
                }
                _ => {
                    let (up, down, error) = pipe(client, upstream).await;
                    session.end(up, down, error).await;
                }
            }
        }
        .instrument(span)
        .await
    }
}

impl Proxy {
    /// TLS for a database guard (PostgreSQL, MySQL): the agentguard CA
    /// towards the agent, the target's `tls` towards the server. `None`:
    /// misconfigured; the session is ended with the reason (the caller
    /// resets the client).
    async fn db_tls(
        &self,
        input: &Input,
        dst: SocketAddr,
        session: &SessionHandle,
    ) -> Option<pg::session::PgTls> {
        let found = self.config.target_for(dst).map(|(t, _)| t);
        let host = input
            .target
            .host
            .clone()
            .unwrap_or_else(|| input.target.ip.clone());
        match self.http.pg_tls(
            &host,
            found.map(|t| t.tls).unwrap_or_default(),
            found.and_then(|t| t.ca_file.as_deref()),
        ) {
            Ok(tls) => Some(tls),
            Err(e) => {
                let reason = format!("TLS for {host} is misconfigured: {e}");
                warn!(%reason, "refused");
                session.end(0, 0, Some(reason)).await;
                None
            }
        }
    }

    /// What a protocol guard's requests are decided with.
    fn guarded(&self, input: Input, session: &SessionHandle) -> crate::pipeline::Guarded {
        crate::pipeline::Guarded {
            decider: Arc::clone(&self.decider),
            approvals: Arc::clone(&self.approvals),
            identity: input.identity,
            target: input.target,
            session: session.clone(),
            prepared: Arc::default(),
        }
    }

    /// Records the allowed connect as the first frame of a new session. An
    /// `Err` (audit overloaded with on_overload = deny) refuses the connection.
    async fn start_session(
        &self,
        input: &Input,
        record: DecisionRecord,
    ) -> Result<SessionHandle, String> {
        let session = self.recorder.session(self.recorder.new_session_id());
        session
            .start(Some(&input.identity), Some(&input.target))
            .await
            .map_err(|e| e.to_string())?;
        if let Err(e) = session.decision(record).await {
            session.end(0, 0, Some(e.to_string())).await;
            return Err(e.to_string());
        }
        Ok(session)
    }
}

/// Counts a connection in flight for as long as it lives.
struct Active(Arc<AtomicUsize>);

impl Active {
    fn new(n: &Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::AcqRel);
        crate::metrics::get().active_connections.inc();
        Self(Arc::clone(n))
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        crate::metrics::get().active_connections.dec();
    }
}

/// Copies both ways; returns bytes up, bytes down and the error, if any.
async fn pipe(mut client: TcpStream, mut upstream: TcpStream) -> (u64, u64, Option<String>) {
    const BUF: usize = 64 * 1024;
    match tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUF, BUF).await {
        Ok((up, down)) => {
            debug!(bytes_up = up, bytes_down = down, "closed");
            (up, down, None)
        }
        Err(e) => {
            debug!("closed with error: {e}");
            (0, 0, Some(e.to_string()))
        }
    }
}

/// Refuse with a RST, so the client sees "connection reset" at once rather
/// than an orderly (and misleading) end of stream.
pub(crate) fn reset(stream: TcpStream) {
    if let Ok(std) = stream.into_std() {
        let sock = socket2::SockRef::from(&std);
        let _ = sock.set_linger(Some(Duration::ZERO));
    }
}
