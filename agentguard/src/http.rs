//! The HTTP and HTTPS guard, for targets whose protocol is http, llm or
//! k8s: a policy decision per request, 403 for refusals, masking of
//! responses, TLS interception with a local CA.
//!
//! One connection, in the order of the files: `detect.rs` (TLS, HTTP/2
//! preface or HTTP/1 from the first bytes) → `tls.rs` (SNI; passthrough, or
//! a minted leaf towards the agent and a verified session towards the
//! server) → `session.rs` (hyper on both sides; per request: `credential.rs` swaps
//! the agent's credential for the stored one, `input.rs` /
//! `k8s.rs` build the policy input, the decision, forward, then `mask.rs`
//! masks the response; an allowed WebSocket upgrade goes on in
//! `websocket.rs`, message by message).
//!
//! The agent's protocol is kept upstream: HTTP/1.1 to HTTP/1.1, HTTP/2 to
//! HTTP/2. Over TLS the server is asked first (with the ALPN list the agent
//! offered) and the agent is offered only what the server chose.

pub mod credential;
pub mod detect;
pub mod input;
pub mod k8s;
pub mod mask;
pub mod session;
pub mod tls;
pub mod upstream;
pub mod websocket;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use agentguard_mask::{Engine, MaskConfig, Selection};
use bytes::{Bytes, BytesMut};
use tokio::{io::AsyncWriteExt as _, net::TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, info, warn};

pub use input::{HttpRequest, LlmRequest, TlsConnect, WebSocketMessage};
pub use k8s::K8sRequest;

use crate::{config::TlsMode, decide::Request};
use detect::{Detected, Prefixed};
use session::Proto;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the guard sends either way.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// How long the agent may take to send its first bytes or its ClientHello.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Detect(#[from] detect::DetectError),
    #[error("not HTTP or TLS (first bytes {0:02x?}); this target only carries HTTP")]
    NotHttp(Vec<u8>),
    #[error("refused: {0}")]
    Refused(String),
    #[error(
        "TLS to {0} refused: no agentguard CA to intercept with (run `agentguard ca init`, or set tls = \"passthrough\" on the target)"
    )]
    NoCa(String, #[source] tls::TlsError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("TLS handshake with the agent failed: {0}")]
    AgentHandshake(std::io::Error),
    #[error("HTTP: {0}")]
    Hyper(#[from] hyper::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// State every HTTP connection shares; built lazily (a proxy that never
/// sees HTTP never loads the trust store or compiles detectors).
#[derive(Default)]
pub struct HttpShared {
    state_dir: PathBuf,
    /// The engine compiled from the config's `[mask]` section.
    configured: Option<Arc<Engine>>,
    engine: OnceLock<Result<(Arc<Engine>, Selection), String>>,
    ca: Mutex<Option<Arc<tls::Ca>>>,
    upstream: OnceLock<tls::Upstream>,
}

impl HttpShared {
    pub fn new(state_dir: PathBuf, masker: Option<Arc<Engine>>) -> Self {
        Self {
            state_dir,
            configured: masker,
            ..Default::default()
        }
    }

    /// The mask engine and the selection that lists request entities (all
    /// detectors, so policy sees secrets the response masking leaves on).
    pub fn engine(&self) -> Result<&(Arc<Engine>, Selection), String> {
        self.engine
            .get_or_init(|| {
                let engine = match &self.configured {
                    Some(e) => Arc::clone(e),
                    None => {
                        Arc::new(Engine::new(&MaskConfig::default()).map_err(|e| e.to_string())?)
                    }
                };
                let all = engine
                    .selection(None, &["all"])
                    .map_err(|e| e.to_string())?;
                Ok((engine, all))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The CA, loaded on first use and again until one exists (so `ca init`
    /// takes effect without a restart).
    fn ca(&self) -> Result<Arc<tls::Ca>, tls::TlsError> {
        let mut ca = self.ca.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ca) = ca.as_ref() {
            return Ok(Arc::clone(ca));
        }
        let loaded = Arc::new(tls::Ca::load(&self.state_dir)?);
        *ca = Some(Arc::clone(&loaded));
        Ok(loaded)
    }

    fn upstream(&self) -> &tls::Upstream {
        self.upstream.get_or_init(tls::Upstream::new)
    }

    /// TLS for a PostgreSQL target named `host`: a server side for agents
    /// that ask for TLS (when the CA exists), and the client side towards
    /// the server that `mode` asks for.
    pub fn pg_tls(
        &self,
        host: &str,
        mode: TlsMode,
        ca_file: Option<&std::path::Path>,
    ) -> Result<crate::pg::session::PgTls, tls::TlsError> {
        let client = self
            .ca()
            .ok()
            .map(|ca| ca.server_config(host, Vec::new()))
            .transpose()?;
        let upstream = match mode {
            TlsMode::Require => Some((tls::unverified_client_config(), tls::server_name(host)?)),
            TlsMode::VerifyFull => {
                Some((self.upstream().config(ca_file)?, tls::server_name(host)?))
            }
            TlsMode::Intercept | TlsMode::Passthrough => None,
        };
        Ok(crate::pg::session::PgTls { client, upstream })
    }
}

/// One guarded HTTP connection's context.
pub struct Conn {
    pub shared: Arc<HttpShared>,
    /// Identity, target, recording: what the pipeline decides with.
    pub guarded: crate::pipeline::Guarded,
    pub tls: TlsMode,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// The original destination (for dialling the server again).
    pub dst: SocketAddr,
    /// What the agent's ClientHello named; set by the TLS step.
    pub sni: Option<String>,
    /// The target's stored credential: set on every request in place of
    /// the agent's (http/credential.rs).
    pub credential: Option<Arc<crate::credentials::Credential>>,
}

/// Serves one agent connection until it closes.
pub async fn run(conn: Conn, mut client: TcpStream, upstream: TcpStream) -> Result<(), HttpError> {
    let mut buf = BytesMut::with_capacity(4096);
    match detect::detect(&mut client, &mut buf, FIRST_BYTES_TIMEOUT).await? {
        Detected::H1 => {
            debug!("HTTP/1.x");
            let redial = plain_redial(&conn);
            session::serve(
                conn,
                Prefixed::new(buf, client),
                Ok(upstream),
                redial,
                Proto::H1,
                "http",
            )
            .await
        }
        Detected::H2Prior => {
            debug!("HTTP/2 (prior knowledge)");
            let redial = plain_redial(&conn);
            session::serve(
                conn,
                Prefixed::new(buf, client),
                Ok(upstream),
                redial,
                Proto::H2,
                "http",
            )
            .await
        }
        Detected::Tls => tls_session(conn, client, buf, upstream).await,
        Detected::Other => {
            crate::proxy::reset(client);
            Err(HttpError::NotHttp(buf.iter().take(8).copied().collect()))
        }
    }
}

fn plain_redial(conn: &Conn) -> upstream::Redial {
    upstream::Redial {
        dst: conn.dst,
        tls: None,
        timeout: conn.connect_timeout,
    }
}

async fn tls_session(
    mut conn: Conn,
    mut client: TcpStream,
    mut buf: BytesMut,
    mut upstream: TcpStream,
) -> Result<(), HttpError> {
    let started = std::time::Instant::now();
    let hello = match detect::read_client_hello(&mut client, &mut buf, FIRST_BYTES_TIMEOUT).await {
        Ok(h) => h,
        Err(e) => {
            crate::proxy::reset(client);
            return Err(e.into());
        }
    };
    conn.sni.clone_from(&hello.sni);
    if conn.tls == TlsMode::Passthrough {
        let request = Request::TlsConnect(TlsConnect {
            sni: hello.sni.clone(),
            alpn: hello
                .alpn
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect(),
            tls: "passthrough",
        });
        let summary = crate::audit::RequestSummary::Other {
            summary: format!(
                "TLS passthrough sni={}",
                hello.sni.as_deref().unwrap_or("-")
            ),
        };
        // Nothing is answered by the guard here: no commit to wait for.
        let verdict = conn
            .guarded
            .decide(crate::pipeline::Ask::new(request, summary, started))
            .await;
        if !verdict.is_allow() {
            crate::proxy::reset(client);
            return Err(HttpError::Refused(format!(
                "TLS passthrough to sni {:?}: {}",
                hello.sni,
                verdict.reason()
            )));
        }
        info!(sni = ?hello.sni, "TLS passthrough allowed");
        upstream.write_all(&buf).await?;
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        return Ok(());
    }
    // Fail closed: without a CA there is no way to see the requests.
    let name = hello
        .sni
        .clone()
        .or_else(|| conn.guarded.target.host.clone())
        .unwrap_or_else(|| conn.guarded.target.ip.clone());
    let ca = match conn.shared.ca() {
        Ok(ca) => ca,
        Err(e) => {
            crate::proxy::reset(client);
            return Err(HttpError::NoCa(name, e));
        }
    };
    if hello.sni.is_none() {
        warn!(
            name,
            "ClientHello without SNI: presenting and verifying the target's host"
        );
    }
    let offered: Vec<Vec<u8>> = hello
        .alpn
        .iter()
        .filter(|p| p.as_slice() == b"h2" || p.as_slice() == b"http/1.1")
        .cloned()
        .collect();
    let base_config = conn.shared.upstream().config(conn.ca_file.as_deref())?;
    let mut client_config = (*base_config).clone();
    client_config.alpn_protocols = offered.clone();
    let connector = TlsConnector::from(Arc::new(client_config));
    let server_name = tls::server_name(&name)?;
    let upstream = match tokio::time::timeout(
        conn.connect_timeout,
        connector.connect(server_name.clone(), upstream),
    )
    .await
    {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!(
            "upstream TLS to {name} failed: {e} (a server certificate agentguard cannot verify is refused; if it is expected, add its CA to the target's ca_file)"
        )),
        Err(_) => Err(format!("upstream TLS handshake with {name} timed out")),
    };
    let agent_alpn = match &upstream {
        Ok(s) => match s.get_ref().1.alpn_protocol() {
            Some(p) => vec![p.to_vec()],
            None => Vec::new(),
        },
        // Let the agent pick, so it can at least read why it is refused.
        Err(reason) => {
            warn!(%reason, "upstream TLS refused");
            offered
        }
    };
    // A reconnect asks for exactly the protocol the first connection got.
    let mut redial_config = (*base_config).clone();
    redial_config.alpn_protocols = agent_alpn.clone();
    let redial = upstream::Redial {
        dst: conn.dst,
        tls: Some((TlsConnector::from(Arc::new(redial_config)), server_name)),
        timeout: conn.connect_timeout,
    };
    let server_config = ca.server_config(&name, agent_alpn)?;
    let agent = TlsAcceptor::from(server_config)
        .accept(Prefixed::new(buf, client))
        .await
        .map_err(HttpError::AgentHandshake)?;
    let proto = if agent.get_ref().1.alpn_protocol() == Some(b"h2") {
        Proto::H2
    } else {
        Proto::H1
    };
    debug!(name, ?proto, "TLS intercepted");
    session::serve(conn, agent, upstream, redial, proto, "https").await
}
