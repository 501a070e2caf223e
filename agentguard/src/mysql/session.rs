//! One guarded MySQL / MariaDB connection, from the server's greeting to
//! COM_QUIT.
//!
//! The protocol is half-duplex once authenticated: a command, then its
//! whole reply. So one task does both directions in lockstep: read a
//! command, decide it through the pipeline, forward it (or answer it with
//! our ERR packet — code 1142, SQLSTATE 42000, `agentguard: …` — in
//! exactly the reply's place, with the reply's sequence id), then read the
//! server's reply to its end, masking rows on the way. A refusal changes
//! nothing on the server, so the session and its transaction go on.
//!
//! The handshake is relayed with compression, TLS and query attributes
//! taken out of the capabilities (see [`codec::cap::STRIPPED`]). TLS is
//! the guard's own on each hop, as for PostgreSQL: an agent's SSLRequest
//! is answered with a TLS handshake under the agentguard CA (offered only
//! when the CA exists; an agent that asks anyway is refused, its bytes are
//! never passed opaque), and towards the server the target's `tls`
//! (`require` | `verify-full`) opens TLS with an SSLRequest of our own,
//! never silently skipped. Either hop's SSLRequest takes a sequence id the
//! other hop never sees, so auth packets are renumbered between them. The
//! auth
//! exchange (any plugin: native, caching_sha2 with its full-auth and RSA
//! key request, ed25519) is relayed packet by packet until the server's OK
//! or ERR.

use std::{collections::HashMap, sync::Arc, time::Instant};

use agentguard_mask::{Engine, FieldContext, Selection};
use bytes::BytesMut;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};
use tracing::{debug, info, warn};

use super::{
    auth,
    codec::{self, BinValue, CodecError, Column, MAX_PACKET, Packet, cap, com, status},
    request::{self, MysqlRequest},
};
use crate::{
    audit::{DecisionId, RequestSummary, ResultRecorder},
    credentials::{self, Credential, CredentialUse},
    decide::Request,
    http::detect::Prefixed,
    pg::{session::PgTls, sql::SqlAnalysis},
    pipeline::{Ask, Guarded, Verdict},
};

/// ER_TABLEACCESS_DENIED_ERROR: what clients show as "command denied".
const DENIED: u16 = 1142;
const DENIED_STATE: &str = "42000";
/// ER_ACCESS_DENIED_ERROR.
const ACCESS_DENIED: u16 = 1045;
/// ER_MALFORMED_PACKET.
const MALFORMED: u16 = 1835;
/// Forwarded reply bytes are written once this much is buffered.
const FLUSH: usize = 64 << 10;
/// Rendered values longer than this are cut in the recording.
const RECORD_VALUE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum MysqlError {
    #[error("protocol error: {0}")]
    Client(CodecError),
    #[error("server protocol error: {0}")]
    Server(CodecError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("audit: {0}")]
    Audit(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// Either side, plaintext or TLS alike.
trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Io for T {}
type Stream = Box<dyn Io>;

/// What stands in for a stream while it is being upgraded to TLS.
fn placeholder() -> Stream {
    Box::new(tokio::io::duplex(1).0)
}

pub struct MysqlGuard {
    /// Identity, target, recording: what the pipeline decides with.
    pub guarded: Guarded,
    pub masker: Option<Arc<Engine>>,
    /// The agentguard CA's server config (agent side) and the target's TLS
    /// towards the server (as the PostgreSQL guard has them).
    pub tls: PgTls,
    /// The target's `[[credentials]]`: when any, the guard logs in itself
    /// (mysql/auth.rs) and the agent's own auth is not used.
    pub credentials: Vec<Arc<Credential>>,
}

/// A statement the server prepared (COM_STMT_PREPARE allowed and OK).
struct Stmt {
    sql: String,
    analysis: SqlAnalysis,
    /// The columns of its last result (binary rows of COM_STMT_FETCH).
    columns: Vec<Column>,
    /// How its last execution's rows are masked (COM_STMT_FETCH).
    mask: Option<Arc<Selection>>,
    /// Its parameter count, and the parameter types bound last.
    params: u16,
    param_types: Vec<u8>,
}

/// How a reply's rows are encoded.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rows {
    Text,
    Binary,
}

struct Conn {
    guard: MysqlGuard,
    client: Stream,
    cbuf: BytesMut,
    server: Stream,
    sbuf: BytesMut,
    /// Bytes for the client not yet written.
    out: BytesMut,
    /// The capabilities in force (the client's, as the server got them).
    caps: u32,
    database: Option<String>,
    db_user: Option<String>,
    /// The stored credential the guard logged in with.
    credential: Option<CredentialUse>,
    stmts: HashMap<u32, Stmt>,
    /// After a refused LOCAL INFILE the client already has our ERR: what
    /// the server still says for that command is read and dropped.
    dropping: bool,
}

/// What a reply was.
struct Outcome {
    /// Its first packet was OK.
    ok: bool,
    /// The columns of its last result set.
    columns: Vec<Column>,
}

pub async fn run(
    guard: MysqlGuard,
    client: TcpStream,
    upstream: TcpStream,
) -> Result<(), MysqlError> {
    info!("mysql session");
    let mut conn = Conn {
        guard,
        client: Box::new(client),
        cbuf: BytesMut::with_capacity(16 << 10),
        server: Box::new(upstream),
        sbuf: BytesMut::with_capacity(64 << 10),
        out: BytesMut::with_capacity(FLUSH),
        caps: 0,
        database: None,
        db_user: None,
        credential: None,
        stmts: HashMap::new(),
        dropping: false,
    };
    let result = conn.session().await;
    if let Err(e) = &result {
        warn!("mysql session ended: {e}");
        let reply = match e {
            MysqlError::Client(c) => {
                let reason = format!("protocol error: {c}");
                let summary = RequestSummary::Other {
                    summary: "mysql packet".into(),
                };
                conn.guard
                    .guarded
                    .refuse(summary, &reason, Instant::now())
                    .await;
                Some(codec::err_packet(
                    1,
                    MALFORMED,
                    "08S01",
                    &format!("agentguard: {reason}"),
                ))
            }
            _ => None,
        };
        let _ = conn.flush().await;
        if let Some(reply) = reply {
            let _ = conn.client.write_all(&reply).await;
        }
    }
    let _ = conn.server.shutdown().await;
    let _ = conn.client.shutdown().await;
    result
}

/// The decision's reply mask, when it has one.
fn allowed_mask(verdict: &mut Verdict) -> Option<Selection> {
    match verdict {
        Verdict::Allow { mask, .. } => mask.take(),
        Verdict::Deny { .. } => None,
    }
}

fn audit_of(verdict: &Verdict) -> Option<DecisionId> {
    match verdict {
        Verdict::Allow { audit, .. } => *audit,
        Verdict::Deny { .. } => None,
    }
}

fn u32_at(payload: &[u8], at: usize) -> Option<u32> {
    let b = payload.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

impl Conn {
    fn deprecate_eof(&self) -> bool {
        self.caps & cap::DEPRECATE_EOF != 0
    }

    async fn read_client(&mut self) -> Result<Option<Packet>, MysqlError> {
        loop {
            if let Some(p) =
                codec::decode(&mut self.cbuf, MAX_PACKET).map_err(MysqlError::Client)?
            {
                return Ok(Some(p));
            }
            if self.client.read_buf(&mut self.cbuf).await? == 0 {
                return Ok(None);
            }
        }
    }

    async fn read_server(&mut self) -> Result<Packet, MysqlError> {
        loop {
            if let Some(p) =
                codec::decode(&mut self.sbuf, MAX_PACKET).map_err(MysqlError::Server)?
            {
                return Ok(p);
            }
            if self.server.read_buf(&mut self.sbuf).await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )
                .into());
            }
        }
    }

    /// Writes what is owed to the client, once the decisions it answers
    /// are committed to the audit log.
    async fn flush(&mut self) -> Result<(), MysqlError> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.guard
            .guarded
            .session
            .committed()
            .await
            .map_err(|e| MysqlError::Audit(e.to_string()))?;
        self.client.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    /// A server packet for the client at sequence id `*seq`: its original
    /// bytes when unchanged and in place, else re-framed.
    fn emit(&mut self, seq: &mut u8, p: &Packet, payload: Option<&[u8]>) {
        if self.dropping {
            return;
        }
        match payload {
            None if p.seq == *seq => {
                self.out.extend_from_slice(&p.raw);
                *seq = p.next_seq();
            }
            _ => *seq = codec::encode(&mut self.out, *seq, payload.unwrap_or(&p.payload)),
        }
    }

    fn refusal(&mut self, seq: u8, reason: &str) {
        let err = codec::err_packet(seq, DENIED, DENIED_STATE, &format!("agentguard: {reason}"));
        self.out.extend_from_slice(&err);
    }

    /// Refused without asking policy (the protocol does not allow it).
    async fn refuse(&mut self, seq: u8, what: String, reason: &str, started: Instant) {
        let summary = RequestSummary::Other { summary: what };
        self.guard.guarded.refuse(summary, reason, started).await;
        self.refusal(seq, reason);
    }

    async fn decide(&self, mut req: MysqlRequest, started: Instant) -> Verdict {
        req.database.clone_from(&self.database);
        req.db_user.clone_from(&self.db_user);
        req.credential.clone_from(&self.credential);
        let summary = req.summary();
        let ask =
            Ask::new(Request::Mysql(req), summary, started).mask_with(self.guard.masker.as_deref());
        self.guard.guarded.decide(ask).await
    }

    async fn send_server(&mut self, raw: &[u8]) -> Result<(), MysqlError> {
        self.server.write_all(raw).await?;
        Ok(())
    }

    async fn session(&mut self) -> Result<(), MysqlError> {
        if !self.handshake().await? {
            return Ok(());
        }
        loop {
            self.flush().await?;
            let Some(cmd) = self.read_client().await? else {
                return Ok(());
            };
            if !self.command(cmd).await? {
                self.flush().await?;
                return Ok(());
            }
        }
    }

    /// Greeting, handshake response (with TLS on either hop), auth.
    /// `false`: the session ended there (the server refused the
    /// connection or the login, or the guard refused it).
    async fn handshake(&mut self) -> Result<bool, MysqlError> {
        let greeting = self.read_server().await?;
        if greeting.is_err() {
            self.out.extend_from_slice(&greeting.raw);
            self.flush().await?;
            return Ok(false);
        }
        let offer = if self.guard.tls.client.is_some() {
            cap::SSL
        } else {
            0
        };
        let parsed = codec::parse_greeting(&greeting.payload, offer).map_err(MysqlError::Server)?;
        debug!(server = %parsed.server_version, "greeting");
        let mut seq = greeting.seq;
        self.emit(&mut seq, &greeting, Some(&parsed.adjusted));
        self.flush().await?;
        let Some(mut resp) = self.read_client().await? else {
            return Ok(false);
        };
        let mut hs = codec::parse_handshake_response(&resp.payload).map_err(MysqlError::Client)?;
        // Sequence ids the agent's hop has and the server's has not.
        let mut agent_extra = 0u8;
        if hs.ssl {
            let Some(config) = self.guard.tls.client.clone() else {
                let reason = "the agent asked for TLS, which the guard did not offer (no agentguard CA: run `agentguard ca init`); connect without TLS";
                self.refuse_login(resp.next_seq(), reason).await;
                return Ok(false);
            };
            // MySQL clients start TLS right after the SSLRequest: what is
            // buffered already is the start of their ClientHello.
            let early = self.cbuf.split();
            let plain = std::mem::replace(&mut self.client, placeholder());
            let stream = tokio_rustls::TlsAcceptor::from(config)
                .accept(Prefixed::new(early, plain))
                .await
                .map_err(|e| MysqlError::Tls(format!("agent handshake failed: {e}")))?;
            debug!("agent's TLS terminated with the agentguard CA");
            self.client = Box::new(stream);
            let Some(full) = self.read_client().await? else {
                return Ok(false);
            };
            hs = codec::parse_handshake_response(&full.payload).map_err(MysqlError::Client)?;
            resp = full;
            agent_extra = 1;
        }
        let mut server_extra = 0u8;
        let mut response = hs.adjusted.clone();
        if let Some((config, name)) = self.guard.tls.upstream.clone() {
            if parsed.capabilities & cap::SSL == 0 {
                let reason = "cannot reach the server: the target requires TLS and the server does not offer it";
                self.refuse_login(resp.next_seq(), reason).await;
                return Ok(false);
            }
            let mut framed = BytesMut::new();
            codec::encode(&mut framed, greeting.next_seq(), &hs.with_ssl(true));
            self.send_server(&framed).await?;
            let plain = std::mem::replace(&mut self.server, placeholder());
            match tokio_rustls::TlsConnector::from(config)
                .connect(name, plain)
                .await
            {
                Ok(stream) => self.server = Box::new(stream),
                Err(e) => {
                    let reason =
                        format!("cannot reach the server: TLS: server handshake failed: {e}");
                    self.refuse_login(resp.next_seq(), &reason).await;
                    return Ok(false);
                }
            }
            debug!("TLS to the server");
            response = hs.with_ssl(false);
            server_extra = 1;
        }
        self.caps = hs.capabilities & !cap::STRIPPED & (parsed.capabilities | cap::LONG_PASSWORD);
        self.db_user = Some(hs.user.clone());
        self.database.clone_from(&hs.database);
        // Agent seq + shift = server seq.
        let shift = server_extra.wrapping_sub(agent_extra);
        if !self.guard.credentials.is_empty() {
            let tls = server_extra == 1;
            return self
                .login(
                    &parsed,
                    &hs,
                    resp.next_seq(),
                    resp.seq.wrapping_add(shift),
                    tls,
                )
                .await;
        }
        let mut framed = BytesMut::new();
        codec::encode(&mut framed, resp.seq.wrapping_add(shift), &response);
        self.send_server(&framed).await?;
        self.auth(shift).await
    }

    /// Refuses the login with our ERR (recorded like any refusal).
    async fn refuse_login(&mut self, seq: u8, reason: &str) {
        self.refuse_login_as(seq, DENIED, DENIED_STATE, reason)
            .await;
    }

    async fn refuse_login_as(&mut self, seq: u8, code: u16, state: &str, reason: &str) {
        let summary = RequestSummary::Other {
            summary: "mysql login".into(),
        };
        self.guard
            .guarded
            .refuse(summary, reason, Instant::now())
            .await;
        warn!(reason, "login refused");
        let err = codec::err_packet(seq, code, state, &format!("agentguard: {reason}"));
        self.out.extend_from_slice(&err);
        let _ = self.flush().await;
    }

    /// Logs in to the server with the stored credential for the agent's
    /// user (whatever the agent sent as auth data is not used), then gives
    /// the agent the server's OK at `agent_seq`. `server_seq`: the
    /// handshake response's sequence id towards the server.
    async fn login(
        &mut self,
        greeting: &codec::Greeting,
        hs: &codec::HandshakeResponse,
        agent_seq: u8,
        server_seq: u8,
        tls: bool,
    ) -> Result<bool, MysqlError> {
        let target = self.guard.guarded.target.name.clone().unwrap_or_default();
        let Some(credential) = credentials::for_db_user(&self.guard.credentials, &hs.user).cloned()
        else {
            let reason = format!(
                "target `{target}` is logged in to with stored credentials and none is for db user `{}`",
                hs.user
            );
            self.refuse_login_as(agent_seq, ACCESS_DENIED, "28000", &reason)
                .await;
            return Ok(false);
        };
        let name = credential.name().to_owned();
        let secret = match credential.secret().await {
            Ok(s) => s,
            Err(e) => {
                self.refuse_login_as(agent_seq, ACCESS_DENIED, "28000", &e.to_string())
                    .await;
                return Ok(false);
            }
        };
        let role = credential.config.role.clone().unwrap_or_default();
        // The server's first plugin when the guard can answer it; else
        // native, and the server switches if it wants another.
        let (plugin, data) =
            match auth::scramble(&greeting.plugin, secret.expose(), &greeting.scramble, tls) {
                Some(d) => (greeting.plugin.clone(), d),
                None => (
                    auth::NATIVE.to_owned(),
                    auth::scramble(auth::NATIVE, secret.expose(), &greeting.scramble, tls)
                        .unwrap_or_default(),
                ),
            };
        let mut framed = BytesMut::new();
        codec::encode(
            &mut framed,
            server_seq,
            &hs.with_login(&role, &data, &plugin, tls),
        );
        self.send_server(&framed).await?;
        let failed = |what: String| format!("credential `{name}`: {what}");
        loop {
            let p = self.read_server().await?;
            let reply: Vec<u8> = match p.first() {
                Some(0x00) => {
                    let mut s = agent_seq;
                    self.emit(&mut s, &p, Some(&p.payload));
                    self.flush().await?;
                    debug!(credential = %name, role, "logged in with the stored credential");
                    self.credential = Some(CredentialUse {
                        name,
                        injected: true,
                        agent_sent: None,
                        agent_db_user: Some(hs.user.clone()),
                    });
                    self.db_user = Some(role);
                    return Ok(true);
                }
                Some(0xff) => {
                    let message = codec::parse_err(&p.payload)
                        .map(|(_, _, m)| m)
                        .unwrap_or_default();
                    let reason = failed(format!(
                        "the server refused the login as `{role}`: {message}"
                    ));
                    self.refuse_login_as(agent_seq, ACCESS_DENIED, "28000", &reason)
                        .await;
                    return Ok(false);
                }
                // AuthSwitchRequest: plugin name, then its nonce.
                Some(0xfe) => {
                    let body = &p.payload[1..];
                    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
                    let plugin = String::from_utf8_lossy(&body[..end]).into_owned();
                    let nonce = body.get(end + 1..).unwrap_or_default();
                    let nonce = nonce.strip_suffix(&[0]).unwrap_or(nonce);
                    match auth::scramble(&plugin, secret.expose(), nonce, tls) {
                        Some(d) => d,
                        None => {
                            let reason = failed(format!(
                                "the server asks for auth plugin {plugin}, which agentguard cannot answer with a stored password{}",
                                if plugin == auth::CLEAR {
                                    " over plaintext (set tls = \"require\")"
                                } else {
                                    ""
                                }
                            ));
                            self.refuse_login_as(agent_seq, ACCESS_DENIED, "28000", &reason)
                                .await;
                            return Ok(false);
                        }
                    }
                }
                // caching_sha2_password: 3 = fast auth done (OK follows),
                // 4 = the full exchange, the password itself.
                Some(0x01) if p.payload.get(1) == Some(&3) => continue,
                Some(0x01) if p.payload.get(1) == Some(&4) && tls => {
                    let mut v = secret.expose().as_bytes().to_vec();
                    v.push(0);
                    v
                }
                _ => {
                    let reason = failed(
                        "the server asked for an auth step agentguard cannot take with a stored password (caching_sha2_password's full authentication needs tls = \"require\" towards the server)".into(),
                    );
                    self.refuse_login_as(agent_seq, ACCESS_DENIED, "28000", &reason)
                        .await;
                    return Ok(false);
                }
            };
            let mut framed = BytesMut::new();
            codec::encode(&mut framed, p.next_seq(), &reply);
            self.send_server(&framed).await?;
        }
    }

    /// Relays the auth exchange both ways until the server's OK (`true`)
    /// or ERR (`false`); `shift` is added to the agent's sequence ids on
    /// the way to the server (and taken off on the way back).
    async fn auth(&mut self, shift: u8) -> Result<bool, MysqlError> {
        loop {
            if let Some(p) =
                codec::decode(&mut self.cbuf, MAX_PACKET).map_err(MysqlError::Client)?
            {
                if shift == 0 {
                    self.send_server(&p.raw).await?;
                } else {
                    let mut framed = BytesMut::new();
                    codec::encode(&mut framed, p.seq.wrapping_add(shift), &p.payload);
                    self.send_server(&framed).await?;
                }
                continue;
            }
            if let Some(p) =
                codec::decode(&mut self.sbuf, MAX_PACKET).map_err(MysqlError::Server)?
            {
                let mut s = p.seq.wrapping_sub(shift);
                self.emit(&mut s, &p, None);
                self.flush().await?;
                if p.is_ok() || p.is_err() {
                    return Ok(p.is_ok());
                }
                continue;
            }
            tokio::select! {
                n = self.client.read_buf(&mut self.cbuf) => {
                    if n? == 0 {
                        return Ok(false);
                    }
                }
                n = self.server.read_buf(&mut self.sbuf) => {
                    if n? == 0 {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the server closed the connection during auth",
                        ).into());
                    }
                }
            }
        }
    }

    /// One command and its reply. `false`: the session is over.
    async fn command(&mut self, cmd: Packet) -> Result<bool, MysqlError> {
        let started = Instant::now();
        let seq = cmd.next_seq();
        let Some(code) = cmd.first() else {
            return Err(MysqlError::Client(CodecError::Empty));
        };
        let body = &cmd.payload[1..];
        let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match code {
            com::QUIT => {
                self.send_server(&cmd.raw).await?;
                return Ok(false);
            }
            com::PING | com::STATISTICS | com::RESET_CONNECTION => {
                if code == com::RESET_CONNECTION {
                    self.stmts.clear();
                }
                self.send_server(&cmd.raw).await?;
                if code == com::STATISTICS {
                    let p = self.read_server().await?;
                    let mut s = seq;
                    self.emit(&mut s, &p, None);
                } else {
                    self.result(seq, Rows::Text, None, None).await?;
                }
            }
            com::QUERY => {
                let sql = lossy(body);
                let analysis = request::analyze(&sql);
                let req = MysqlRequest::new("query", sql, analysis);
                self.decided(cmd, req, started, Rows::Text).await?;
            }
            com::INIT_DB => {
                let db = lossy(body);
                let sql = format!("USE {}", quote_ident(&db));
                let analysis = request::analyze(&sql);
                let req = MysqlRequest::new("init_db", sql, analysis);
                if self.decided(cmd, req, started, Rows::Text).await? {
                    self.database = Some(db);
                }
            }
            com::FIELD_LIST => {
                let table = lossy(body.split(|&b| b == 0).next().unwrap_or_default());
                let sql = format!("SHOW COLUMNS FROM {}", quote_ident(&table));
                let analysis = request::analyze(&sql);
                let req = MysqlRequest::new("field_list", sql, analysis);
                let mut verdict = self.decide(req, started).await;
                if verdict.is_allow() {
                    let _ = allowed_mask(&mut verdict);
                    self.send_server(&cmd.raw).await?;
                    let mut s = seq;
                    loop {
                        let p = self.read_server().await?;
                        self.emit(&mut s, &p, None);
                        if p.is_eof() || p.is_err() {
                            break;
                        }
                    }
                } else {
                    self.refusal(seq, verdict.reason());
                }
            }
            com::PROCESS_KILL => {
                let sql = match u32_at(&cmd.payload, 1) {
                    Some(id) => format!("KILL {id}"),
                    None => "KILL".into(),
                };
                let analysis = request::analyze(&sql);
                let req = MysqlRequest::new("process_kill", sql, analysis);
                self.decided(cmd, req, started, Rows::Text).await?;
            }
            com::SET_OPTION => {
                let on = body.first() == Some(&0);
                let sql = format!(
                    "SET OPTION MULTI_STATEMENTS {}",
                    if on { "ON" } else { "OFF" }
                );
                let req = MysqlRequest::bare("set_option", sql);
                self.decided(cmd, req, started, Rows::Text).await?;
            }
            com::CHANGE_USER if !self.guard.credentials.is_empty() => {
                let reason = "COM_CHANGE_USER cannot switch users on a target agentguard logs in to with stored credentials; open a new connection as the other user";
                self.refuse(seq, "mysql change_user".into(), reason, started)
                    .await;
            }
            com::CHANGE_USER => {
                let (user, db) = codec::parse_change_user(&cmd.payload, self.caps)
                    .ok_or(MysqlError::Client(CodecError::Malformed("COM_CHANGE_USER")))?;
                let mut req = MysqlRequest::bare("change_user", format!("CHANGE USER {user}"));
                // The user it becomes, and the database it opens.
                let verdict = {
                    req.database.clone_from(&db);
                    req.db_user = Some(user.clone());
                    let summary = req.summary();
                    let ask = Ask::new(Request::Mysql(req), summary, started);
                    self.guard.guarded.decide(ask).await
                };
                if verdict.is_allow() {
                    self.stmts.clear();
                    self.send_server(&cmd.raw).await?;
                    if self.auth(0).await? {
                        self.db_user = Some(user);
                        self.database = db;
                    }
                } else {
                    self.refusal(seq, verdict.reason());
                }
            }
            com::BINLOG_DUMP | com::BINLOG_DUMP_GTID | com::REGISTER_SLAVE => {
                let command = match code {
                    com::BINLOG_DUMP => "binlog_dump",
                    com::BINLOG_DUMP_GTID => "binlog_dump_gtid",
                    _ => "register_slave",
                };
                let req = MysqlRequest::bare(command, command.to_ascii_uppercase());
                let verdict = self.decide(req, started).await;
                if verdict.is_allow() {
                    // The binlog streams as packets until EOF or ERR.
                    self.send_server(&cmd.raw).await?;
                    let mut s = seq;
                    loop {
                        let p = self.read_server().await?;
                        self.emit(&mut s, &p, None);
                        if p.is_eof() || p.is_err() || (code == com::REGISTER_SLAVE && p.is_ok()) {
                            break;
                        }
                        if self.out.len() >= FLUSH {
                            self.flush().await?;
                        }
                    }
                } else {
                    self.refusal(seq, verdict.reason());
                }
            }
            com::STMT_PREPARE => {
                let sql = lossy(body);
                let analysis = request::analyze(&sql);
                let req = MysqlRequest::new("stmt_prepare", sql.clone(), analysis.clone());
                let verdict = self.decide(req, started).await;
                if verdict.is_allow() {
                    self.send_server(&cmd.raw).await?;
                    if let Some((id, params)) = self.prepare_reply(seq).await? {
                        self.stmts.insert(
                            id,
                            Stmt {
                                sql,
                                analysis,
                                columns: Vec::new(),
                                mask: None,
                                params,
                                param_types: Vec::new(),
                            },
                        );
                    }
                } else {
                    self.refusal(seq, verdict.reason());
                }
            }
            com::STMT_EXECUTE => {
                let id = u32_at(&cmd.payload, 1);
                let Some(stmt) = id.and_then(|id| self.stmts.get_mut(&id)) else {
                    let what = format!("mysql COM_STMT_EXECUTE {id:?}");
                    self.refuse(seq, what, "unknown prepared statement", started)
                        .await;
                    return Ok(true);
                };
                let mut req =
                    MysqlRequest::new("stmt_execute", stmt.sql.clone(), stmt.analysis.clone());
                req.params = codec::execute_params(
                    &cmd.payload,
                    usize::from(stmt.params),
                    &mut stmt.param_types,
                );
                let mut verdict = self.decide(req, started).await;
                if verdict.is_allow() {
                    let mask = allowed_mask(&mut verdict).map(Arc::new);
                    self.send_server(&cmd.raw).await?;
                    let outcome = self
                        .result(seq, Rows::Binary, mask.as_deref(), audit_of(&verdict))
                        .await?;
                    if let Some(s) = id.and_then(|id| self.stmts.get_mut(&id)) {
                        s.columns = outcome.columns;
                        s.mask = mask;
                    }
                } else {
                    self.refusal(seq, verdict.reason());
                }
            }
            com::STMT_FETCH => {
                let id = u32_at(&cmd.payload, 1);
                let Some(stmt) = id.and_then(|id| self.stmts.get(&id)) else {
                    let what = format!("mysql COM_STMT_FETCH {id:?}");
                    self.refuse(seq, what, "unknown prepared statement", started)
                        .await;
                    return Ok(true);
                };
                let columns = stmt.columns.clone();
                let mask = stmt.mask.clone();
                self.send_server(&cmd.raw).await?;
                let mut s = seq;
                let mut recorder = None;
                let mut findings = Vec::new();
                self.rows(
                    &mut s,
                    &columns,
                    Rows::Binary,
                    mask.as_deref(),
                    &mut recorder,
                    &mut findings,
                )
                .await?;
            }
            com::STMT_CLOSE | com::STMT_SEND_LONG_DATA => {
                // No reply to either.
                if let Some(id) = u32_at(&cmd.payload, 1) {
                    if code == com::STMT_CLOSE {
                        self.stmts.remove(&id);
                    }
                    self.send_server(&cmd.raw).await?;
                }
            }
            com::STMT_RESET => {
                let id = u32_at(&cmd.payload, 1);
                if id.is_some_and(|id| self.stmts.contains_key(&id)) {
                    self.send_server(&cmd.raw).await?;
                    self.result(seq, Rows::Text, None, None).await?;
                } else {
                    let what = format!("mysql COM_STMT_RESET {id:?}");
                    self.refuse(seq, what, "unknown prepared statement", started)
                        .await;
                }
            }
            other => {
                let what = format!("mysql command {other:#04x}");
                let reason = format!("MySQL command {other:#04x} is not supported by agentguard");
                self.refuse(seq, what, &reason, started).await;
            }
        }
        Ok(true)
    }

    /// Decides a command whose reply is a result (OK, ERR, result sets);
    /// forwards it and relays the reply when allowed. `true`: forwarded
    /// and the server answered OK.
    async fn decided(
        &mut self,
        cmd: Packet,
        req: MysqlRequest,
        started: Instant,
        rows: Rows,
    ) -> Result<bool, MysqlError> {
        let seq = cmd.next_seq();
        let mut verdict = self.decide(req, started).await;
        if !verdict.is_allow() {
            self.refusal(seq, verdict.reason());
            return Ok(false);
        }
        let mask = allowed_mask(&mut verdict);
        self.send_server(&cmd.raw).await?;
        let outcome = self
            .result(seq, rows, mask.as_ref(), audit_of(&verdict))
            .await?;
        Ok(outcome.ok)
    }

    /// COM_STMT_PREPARE's reply; the statement id and its parameter count
    /// when it is OK.
    async fn prepare_reply(&mut self, seq: u8) -> Result<Option<(u32, u16)>, MysqlError> {
        let p = self.read_server().await?;
        let mut s = seq;
        self.emit(&mut s, &p, None);
        if !p.is_ok() {
            return Ok(None);
        }
        let id = u32_at(&p.payload, 1);
        let count = |at: usize| {
            p.payload
                .get(at..at + 2)
                .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]))
        };
        let (columns, params) = (count(5), count(7));
        for n in [params, columns] {
            for _ in 0..n {
                let d = self.read_server().await?;
                self.emit(&mut s, &d, None);
            }
            if n > 0 && !self.deprecate_eof() {
                let eof = self.read_server().await?;
                self.emit(&mut s, &eof, None);
            }
        }
        Ok(id.map(|id| (id, params)))
    }

    /// The reply to a command that answers with results: OK, ERR, EOF, a
    /// LOCAL INFILE request, or result sets (several while the server says
    /// more results exist).
    async fn result(
        &mut self,
        seq: u8,
        rows: Rows,
        mask: Option<&Selection>,
        audit: Option<DecisionId>,
    ) -> Result<Outcome, MysqlError> {
        let mut s = seq;
        let mut recorder = audit.map(|id| self.guard.guarded.session.result_recorder(id));
        let mut findings = Vec::new();
        let mut outcome = Outcome {
            ok: false,
            columns: Vec::new(),
        };
        let mut first = true;
        loop {
            let p = self.read_server().await?;
            if first {
                outcome.ok = p.is_ok();
                first = false;
            }
            let more = match p.first() {
                Some(0x00) => {
                    let (affected, st) = codec::parse_ok(&p.payload).unwrap_or((0, 0));
                    self.emit(&mut s, &p, None);
                    if let Some(r) = &mut recorder {
                        r.complete(format!("OK {affected}")).await;
                    }
                    st & status::MORE_RESULTS_EXISTS != 0
                }
                Some(0xff) => {
                    self.emit(&mut s, &p, None);
                    if let (Some(r), Some((code, _, message))) =
                        (&mut recorder, codec::parse_err(&p.payload))
                    {
                        r.error(code.to_string(), message).await;
                    }
                    false
                }
                _ if p.is_eof() => {
                    self.emit(&mut s, &p, None);
                    codec::eof_status(&p.payload, self.deprecate_eof())
                        & status::MORE_RESULTS_EXISTS
                        != 0
                }
                Some(0xfb) => {
                    if self.dropping {
                        // Another file asked for: no again.
                        let mut framed = BytesMut::new();
                        codec::encode(&mut framed, p.next_seq(), &[]);
                        self.send_server(&framed).await?;
                    } else if !self.local_infile(&mut s, &p).await? {
                        self.dropping = true;
                        if let Some(r) = &mut recorder {
                            r.error(DENIED.to_string(), "LOAD DATA LOCAL INFILE refused".into())
                                .await;
                        }
                    }
                    // The server's OK or ERR for the load follows.
                    true
                }
                _ => {
                    let mut pos = 0;
                    let n = codec::lenenc_int(&p.payload, &mut pos)
                        .flatten()
                        .ok_or(MysqlError::Server(CodecError::Malformed("column count")))?;
                    self.emit(&mut s, &p, None);
                    let mut columns = Vec::new();
                    for _ in 0..n {
                        let d = self.read_server().await?;
                        columns.push(codec::parse_column(&d.payload).unwrap_or_default());
                        self.emit(&mut s, &d, None);
                    }
                    if let Some(r) = &mut recorder {
                        r.columns(columns.iter().map(|c| c.name.clone()).collect())
                            .await;
                    }
                    outcome.columns = columns;
                    let mut cursor = false;
                    if !self.deprecate_eof() {
                        let eof = self.read_server().await?;
                        self.emit(&mut s, &eof, None);
                        // Rows come with COM_STMT_FETCH.
                        cursor =
                            codec::eof_status(&eof.payload, false) & status::CURSOR_EXISTS != 0;
                    }
                    if cursor {
                        false
                    } else {
                        let columns = std::mem::take(&mut outcome.columns);
                        let more = self
                            .rows(&mut s, &columns, rows, mask, &mut recorder, &mut findings)
                            .await?;
                        outcome.columns = columns;
                        more
                    }
                }
            };
            if !more {
                break;
            }
        }
        self.dropping = false;
        if let Some(mut r) = recorder {
            r.masked(findings.iter().map(|(e, n)| (&**e, u64::from(*n))));
            r.finish().await;
        }
        Ok(outcome)
    }

    /// Rows to the end of one result set (EOF / OK, or ERR); masked when a
    /// mask is given. `true`: the server says more results follow.
    async fn rows(
        &mut self,
        s: &mut u8,
        columns: &[Column],
        rows: Rows,
        mask: Option<&Selection>,
        recorder: &mut Option<ResultRecorder>,
        findings: &mut Vec<(Arc<str>, u32)>,
    ) -> Result<bool, MysqlError> {
        let engine = self.guard.masker.clone();
        let types: Vec<u8> = columns.iter().map(|c| c.column_type).collect();
        let mut count = 0u64;
        loop {
            let p = self.read_server().await?;
            if p.is_eof() {
                self.emit(s, &p, None);
                if let Some(r) = recorder {
                    r.complete(format!("{count} rows")).await;
                }
                let st = codec::eof_status(&p.payload, self.deprecate_eof());
                return Ok(st & status::MORE_RESULTS_EXISTS != 0);
            }
            if p.is_err() {
                self.emit(s, &p, None);
                if let (Some(r), Some((code, _, message))) =
                    (recorder.as_mut(), codec::parse_err(&p.payload))
                {
                    r.error(code.to_string(), message).await;
                }
                return Ok(false);
            }
            count += 1;
            let masked = match (&engine, mask) {
                (Some(engine), Some(sel)) => match rows {
                    Rows::Text => mask_text_row(engine, &p.payload, columns, sel, findings),
                    Rows::Binary => {
                        mask_binary_row(engine, &p.payload, columns, &types, sel, findings)
                    }
                },
                _ => None,
            };
            if let Some(r) = recorder.as_mut() {
                let values = r.wants_row().then(|| {
                    render_row(
                        masked.as_deref().unwrap_or(&p.payload),
                        columns,
                        &types,
                        rows,
                    )
                });
                r.row(values).await;
            }
            self.emit(s, &p, masked.as_deref());
            if self.out.len() >= FLUSH && !self.dropping {
                self.flush().await?;
            }
        }
    }

    /// The server asks the client for a local file (LOAD DATA LOCAL
    /// INFILE): decided. Allowed: the request goes to the client and its
    /// file to the server. Refused: the server gets an empty file (the
    /// protocol's way to end it), the client our ERR in the request's
    /// place. `true`: allowed.
    async fn local_infile(&mut self, s: &mut u8, p: &Packet) -> Result<bool, MysqlError> {
        let file = String::from_utf8_lossy(&p.payload[1..]).into_owned();
        let mut req =
            MysqlRequest::bare("local_infile", format!("LOAD DATA LOCAL INFILE '{file}'"));
        req.file = Some(file);
        let verdict = self.decide(req, Instant::now()).await;
        if verdict.is_allow() {
            self.emit(s, p, None);
            self.flush().await?;
            loop {
                let Some(part) = self.read_client().await? else {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the agent closed during LOAD DATA LOCAL",
                    )
                    .into());
                };
                self.send_server(&part.raw).await?;
                if part.payload.is_empty() {
                    return Ok(true);
                }
            }
        }
        let mut framed = BytesMut::new();
        codec::encode(&mut framed, p.next_seq(), &[]);
        self.send_server(&framed).await?;
        let err = codec::err_packet(
            *s,
            DENIED,
            DENIED_STATE,
            &format!("agentguard: {}", verdict.reason()),
        );
        self.out.extend_from_slice(&err);
        self.flush().await?;
        Ok(false)
    }
}

/// The name a column rule matches (the table's own column name, so an
/// alias does not escape a rule) and its `table.column` path.
fn column_ctx(c: &Column) -> (&str, Option<String>) {
    let name = if c.org_name.is_empty() {
        &c.name
    } else {
        &c.org_name
    };
    let table = if c.org_table.is_empty() {
        &c.table
    } else {
        &c.org_table
    };
    let path = (!table.is_empty()).then(|| format!("{table}.{name}"));
    (name, path)
}

type Findings = Vec<(Arc<str>, u32)>;

/// A text row with its values masked; `None` when nothing changed.
fn mask_text_row(
    engine: &Engine,
    payload: &[u8],
    columns: &[Column],
    sel: &Selection,
    findings: &mut Findings,
) -> Option<Vec<u8>> {
    let values = codec::text_row(payload, columns.len())?;
    let mut changed = false;
    let mut out: Vec<Option<std::borrow::Cow<'_, [u8]>>> = Vec::with_capacity(values.len());
    for (v, c) in values.iter().zip(columns) {
        let Some(r) = v else {
            out.push(None);
            continue;
        };
        let raw = &payload[r.clone()];
        let (name, path) = column_ctx(c);
        let m = engine.mask_bytes(raw, &FieldContext::column(name, path.as_deref()), sel);
        findings.extend(m.findings.iter().map(|f| (f.entity.clone(), f.count)));
        match m.value {
            std::borrow::Cow::Borrowed(_) => out.push(Some(std::borrow::Cow::Borrowed(raw))),
            _ if m.null => {
                changed = true;
                out.push(None);
            }
            std::borrow::Cow::Owned(v) => {
                changed = true;
                out.push(Some(std::borrow::Cow::Owned(v)));
            }
        }
    }
    changed.then(|| codec::build_text_row(out.iter().map(|v| v.as_deref())))
}

/// A binary row with its string values masked; a value of another type a
/// rule selects becomes NULL (a token cannot be written into an integer).
fn mask_binary_row(
    engine: &Engine,
    payload: &[u8],
    columns: &[Column],
    types: &[u8],
    sel: &Selection,
    findings: &mut Findings,
) -> Option<Vec<u8>> {
    let values = codec::binary_row(payload, types)?;
    let mut changed = false;
    let mut replaced = Vec::with_capacity(values.len());
    for (v, c) in values.iter().zip(columns) {
        let (r, text) = match v {
            BinValue::Null => {
                replaced.push(None);
                continue;
            }
            BinValue::Str(r) => (r, true),
            BinValue::Fixed(r) => (r, false),
        };
        let raw = &payload[r.clone()];
        let (name, path) = column_ctx(c);
        let m = engine.mask_bytes(raw, &FieldContext::column(name, path.as_deref()), sel);
        findings.extend(m.findings.iter().map(|f| (f.entity.clone(), f.count)));
        match m.value {
            std::borrow::Cow::Borrowed(_) => replaced.push(None),
            _ if m.null || !text => {
                changed = true;
                replaced.push(Some(None));
            }
            std::borrow::Cow::Owned(v) => {
                changed = true;
                replaced.push(Some(Some(v)));
            }
        }
    }
    changed.then(|| codec::build_binary_row(payload, &values, &replaced))
}

/// A row as text for the recording (as forwarded).
fn render_row(payload: &[u8], columns: &[Column], types: &[u8], rows: Rows) -> Vec<Option<String>> {
    let cut = |b: &[u8]| String::from_utf8_lossy(&b[..b.len().min(RECORD_VALUE)]).into_owned();
    match rows {
        Rows::Text => codec::text_row(payload, columns.len())
            .map(|values| {
                values
                    .into_iter()
                    .map(|v| v.map(|r| cut(&payload[r])))
                    .collect()
            })
            .unwrap_or_default(),
        Rows::Binary => codec::binary_row(payload, types)
            .map(|values| {
                values
                    .iter()
                    .zip(types)
                    .map(|(v, ty)| match v {
                        BinValue::Null => None,
                        BinValue::Str(r) => Some(cut(&payload[r.clone()])),
                        BinValue::Fixed(r) => Some(codec::render_fixed(&payload[r.clone()], *ty)),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}
