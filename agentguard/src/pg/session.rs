//! One guarded PostgreSQL connection, from the startup packet to Terminate.
//!
//! Two tasks: client→server decides each Query / Parse, server→client masks
//! rows and delivers refusals. A refused statement never reaches the server:
//! in its place the server gets a Sync, whose ReadyForQuery comes back in
//! exactly the position the statement's reply would have had, and our
//! ErrorResponse (SQLSTATE 42501) is written just before it. So pipelined
//! requests stay in order, and the transaction status the client sees is the
//! server's own.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Instant,
};

use agentguard_mask::{Engine, FieldContext, Selection};
use bytes::{Bytes, BytesMut};
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tracing::{debug, info, warn};

use super::{
    auth,
    codec::{self, Column, Startup, tag},
    sql::{self, StatementInfo},
};
use crate::{
    audit::{DecisionId, RequestSummary, ResultRecorder, SessionHandle},
    credentials::{self, Credential, CredentialUse, Secret},
    decide::Request,
    pipeline::{Ask, Guarded, Verdict},
};

/// Longest message either side may announce. PostgreSQL's own limit for a
/// query is 1 GB; rows and COPY data are far smaller in practice.
const MAX_MESSAGE: usize = 256 << 20;

/// SQLSTATE insufficient_privilege: what a client shows as "permission denied".
const DENIED: &str = "42501";
/// SQLSTATE protocol_violation.
const PROTOCOL_VIOLATION: &str = "08P01";

/// `input.request` for kind `sql`.
#[derive(Debug, Clone, Serialize)]
pub struct SqlRequest {
    pub sql: String,
    /// `sql` lowercased with its literals replaced (see `SqlAnalysis::shape`).
    pub sql_shape: String,
    pub statements: Vec<StatementInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parse_error: Option<String>,
    pub database: Option<String>,
    pub db_user: Option<String>,
    pub application_name: Option<String>,
    /// "simple" (Query) or "extended" (Parse).
    pub protocol: &'static str,
    /// The guard logged in with a stored credential (`db_user` is its role).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<CredentialUse>,
}

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("protocol error: {0}")]
    Codec(#[from] codec::CodecError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("login refused: {0}")]
    Login(String),
}

/// TLS on either side of a PostgreSQL session.
#[derive(Default)]
pub struct PgTls {
    /// Answers an agent's SSLRequest with 'S' and terminates its TLS with
    /// a leaf of the agentguard CA; None (no CA): 'N', plaintext.
    pub client: Option<Arc<rustls::ServerConfig>>,
    /// TLS to the server (target `tls = "require" | "verify-full"`).
    pub upstream: Option<(
        Arc<rustls::ClientConfig>,
        rustls_pki_types::ServerName<'static>,
    )>,
}

/// Either side's halves, plaintext or TLS alike.
type Rd = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
type Wr = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

fn halves<S>(s: S) -> (Rd, Wr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (r, w) = tokio::io::split(s);
    (Box::new(r), Box::new(w))
}

/// Bytes of an SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

pub struct PgGuard {
    /// Identity, target, recording: what the pipeline decides with.
    pub guarded: Guarded,
    pub tls: PgTls,
    pub masker: Option<Arc<Engine>>,
    /// The target's `[[credentials]]`: when any, the guard logs in itself.
    pub credentials: Vec<Arc<Credential>>,
}

/// How to mask the rows of one statement's results.
#[derive(Debug)]
struct RowMask {
    sel: Selection,
    /// The one table the statement reads, if it reads exactly one: column
    /// rules match `table.column` against it (RowDescription only carries
    /// table OIDs, and looking names up would cost a query per statement).
    table: Option<String>,
}

/// What the server's replies will be, in order; pushed by the client→server
/// task before it forwards, popped by the server→client task.
#[derive(Debug)]
enum Pending {
    /// Ends with ReadyForQuery: a Query, a Sync, or a refusal's stand-in Sync.
    /// `rows`: how to mask a simple Query's rows (and COPY TO STDOUT data).
    Ready {
        inject: Option<Bytes>,
        rows: Option<Arc<RowMask>>,
        /// The decision whose response this is (recorded as it goes out).
        audit: Option<DecisionId>,
    },
    Parsed(String),
    Bound(String),
    DescribeStatement(String),
    DescribePortal(String),
    Execute {
        portal: String,
        statement: String,
        rows: Option<Arc<RowMask>>,
        /// Result formats asked for in Bind (0 text, 1 binary).
        formats: Arc<Vec<i16>>,
        audit: Option<DecisionId>,
    },
}

#[derive(Default)]
struct Shared {
    pending: VecDeque<Pending>,
}

/// Reads the agent's SSLRequest / GSSENCRequest, if any, on the plain
/// socket: TLS when the CA can serve it ('S'), else 'N'. Returns the
/// agent's side and what it sent after.
async fn client_side(
    mut client: TcpStream,
    tls: Option<&Arc<rustls::ServerConfig>>,
    buf: &mut BytesMut,
) -> Result<(Rd, Wr), PgError> {
    loop {
        match codec::decode_startup(buf) {
            Ok(Some(Startup::SslRequest)) if let Some(config) = tls => {
                // Bytes sent before the handshake would be read as if they
                // came over TLS (CVE-2021-23222's shape): refuse them.
                if !buf.is_empty() {
                    return Err(PgError::Tls(
                        "data sent after SSLRequest before the TLS handshake".into(),
                    ));
                }
                client.write_all(b"S").await?;
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(config));
                let stream = acceptor
                    .accept(client)
                    .await
                    .map_err(|e| PgError::Tls(format!("agent handshake failed: {e}")))?;
                debug!("agent's TLS terminated with the agentguard CA");
                return Ok(halves(stream));
            }
            Ok(Some(Startup::SslRequest | Startup::GssEncRequest)) => {
                // 'N': go on in plaintext (over loopback).
                client.write_all(b"N").await?;
            }
            Ok(Some(Startup::Cancel(raw) | Startup::Startup { raw, .. })) => {
                // Not for this step: put it back for the startup loop.
                let mut again = BytesMut::from(&raw[..]);
                again.extend_from_slice(buf);
                *buf = again;
                let (r, w) = client.into_split();
                return Ok((Box::new(r), Box::new(w)));
            }
            Ok(None) => {
                if client.read_buf(buf).await? == 0 {
                    return Err(PgError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
            }
            Err(e) => {
                let _ = client
                    .write_all(&codec::error_response(
                        PROTOCOL_VIOLATION,
                        &format!("agentguard: protocol error: {e}"),
                    ))
                    .await;
                return Err(e.into());
            }
        }
    }
}

/// TLS to the server when the target asks for it: SSLRequest, 'S', handshake.
async fn server_side(mut upstream: TcpStream, tls: &PgTls) -> Result<(Rd, Wr), PgError> {
    let Some((config, name)) = &tls.upstream else {
        let (r, w) = upstream.into_split();
        return Ok((Box::new(r), Box::new(w)));
    };
    upstream.write_all(&SSL_REQUEST).await?;
    let mut answer = [0u8; 1];
    upstream.read_exact(&mut answer).await?;
    if answer[0] != b'S' {
        return Err(PgError::Tls(format!(
            "the server refused TLS (answered {:?}) and the target requires it",
            char::from(answer[0])
        )));
    }
    let stream = tokio_rustls::TlsConnector::from(Arc::clone(config))
        .connect(name.clone(), upstream)
        .await
        .map_err(|e| PgError::Tls(format!("server handshake failed: {e}")))?;
    Ok(halves(stream))
}

pub async fn run(guard: PgGuard, client: TcpStream, upstream: TcpStream) -> Result<(), PgError> {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let (mut client_rd, mut client_wr) =
        match client_side(client, guard.tls.client.as_ref(), &mut buf).await {
            Ok(c) => c,
            Err(PgError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => {
                // Not PostgreSQL (HTTP, TLS without SSLRequest, junk), or a
                // failed TLS start: an attempt worth a record.
                let reason = match &e {
                    PgError::Codec(c) => format!("protocol error: {c}"),
                    other => other.to_string(),
                };
                guard.refused("postgres startup", &reason).await;
                return Err(e);
            }
        };
    let mut upstream = Some(upstream);

    let (params, upstream_rd, mut upstream_wr, login) = loop {
        match codec::decode_startup(&mut buf) {
            Ok(Some(Startup::SslRequest | Startup::GssEncRequest)) => {
                // Already on TLS, or asked again: 'N'.
                client_wr.write_all(b"N").await?;
            }
            Ok(Some(Startup::Cancel(raw))) => {
                // A cancel arrives on its own connection to the same server;
                // its key is the server's own, so it is forwarded unchanged
                // (over TLS too when the target asks for it).
                if let Some(up) = upstream.take() {
                    let (_, mut w) = server_side(up, &guard.tls).await?;
                    w.write_all(&raw).await?;
                    let _ = w.shutdown().await;
                }
                debug!("cancel request forwarded");
                return Ok(());
            }
            Ok(Some(Startup::Startup { raw, params })) => {
                let Some(up) = upstream.take() else {
                    return Ok(());
                };
                // Decided before the server is touched: a user no
                // credential maps is refused here.
                let injected = match guard.injection(&params).await {
                    Ok(i) => i,
                    Err(reason) => {
                        let _ = client_wr
                            .write_all(&codec::error_response(
                                "28000",
                                &format!("agentguard: {reason}"),
                            ))
                            .await;
                        guard.refused("postgres login", &reason).await;
                        return Err(PgError::Login(reason));
                    }
                };
                let (mut r, mut w) = match server_side(up, &guard.tls).await {
                    Ok(h) => h,
                    Err(e) => {
                        let _ = client_wr
                            .write_all(&codec::error_response(
                                "08001",
                                &format!("agentguard: cannot reach the server: {e}"),
                            ))
                            .await;
                        return Err(e);
                    }
                };
                let Some((credential, secret)) = injected else {
                    w.write_all(&raw).await?;
                    break (params, r, w, None);
                };
                match guard
                    .login(&credential, &secret, &params, &mut r, &mut w)
                    .await
                {
                    Ok((ok, rest)) => {
                        client_wr.write_all(&ok).await?;
                        // What the server sent after AuthenticationOk comes
                        // first on the relay.
                        let r: Rd = Box::new(std::io::Cursor::new(rest).chain(r));
                        break (params, r, w, Some(credential));
                    }
                    Err((sqlstate, reason)) => {
                        let _ = client_wr
                            .write_all(&codec::error_response(
                                sqlstate,
                                &format!("agentguard: {reason}"),
                            ))
                            .await;
                        guard.refused("postgres login", &reason).await;
                        return Err(PgError::Login(reason));
                    }
                }
            }
            Ok(None) => {
                if client_rd.read_buf(&mut buf).await? == 0 {
                    return Ok(());
                }
            }
            Err(e) => {
                let _ = client_wr
                    .write_all(&codec::error_response(
                        PROTOCOL_VIOLATION,
                        &format!("agentguard: protocol error: {e}"),
                    ))
                    .await;
                // Not PostgreSQL (HTTP, TLS, junk): an attempt worth a record.
                guard
                    .refused("postgres startup", &format!("protocol error: {e}"))
                    .await;
                return Err(e.into());
            }
        }
    };
    let param = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let role = login.as_ref().and_then(|c| c.config.role.clone());
    let credential = login.map(|c| CredentialUse {
        name: c.name().to_owned(),
        injected: true,
        agent_sent: None,
        agent_db_user: param("user"),
    });
    let session = Session {
        database: param("database").or_else(|| param("user")),
        db_user: role.or_else(|| param("user")),
        application_name: param("application_name"),
        credential,
        guard,
    };
    info!(db_user = ?session.db_user, database = ?session.database, credential = ?session.credential.as_ref().map(|c| &c.name), "postgres session");
    // Startup parameters only: passwords travel later, in messages that are
    // passed through and never recorded.
    let credential_name = session.credential.as_ref().map(|c| c.name.clone());
    let details: BTreeMap<String, String> = [
        ("database", &session.database),
        ("db_user", &session.db_user),
        ("application_name", &session.application_name),
        ("credential", &credential_name),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k.to_owned(), v.clone()?)))
    .collect();
    session.guard.guarded.session.details(details).await;

    let shared = Arc::new(Mutex::new(Shared::default()));
    let client_wr = Arc::new(tokio::sync::Mutex::new(client_wr));
    let s2c = tokio::spawn(server_to_client(
        upstream_rd,
        Arc::clone(&client_wr),
        Arc::clone(&shared),
        session.guard.masker.clone(),
        session.guard.guarded.session.clone(),
    ));
    let result = client_to_server(
        &session,
        client_rd,
        buf,
        &mut upstream_wr,
        &client_wr,
        &shared,
    )
    .await;
    if let Err(e) = &result {
        warn!("postgres session ended: {e}");
        if let PgError::Codec(_) = e {
            session
                .guard
                .refused("postgres message", &e.to_string())
                .await;
        }
        let msg = codec::error_response(PROTOCOL_VIOLATION, &format!("agentguard: {e}"));
        let _ = client_wr.lock().await.write_all(&msg).await;
        s2c.abort();
    }
    let _ = upstream_wr.shutdown().await;
    let _ = s2c.await;
    result
}

struct Session {
    guard: PgGuard,
    database: Option<String>,
    /// The role the server knows the session as.
    db_user: Option<String>,
    application_name: Option<String>,
    credential: Option<CredentialUse>,
}

impl Session {
    /// The verdict on one Query / Parse, and how to mask its rows when
    /// allowed.
    async fn decide(
        &self,
        sql: &str,
        analysis: sql::SqlAnalysis,
        protocol: &'static str,
    ) -> (Verdict, Option<Arc<RowMask>>) {
        let started = Instant::now();
        // Column rules match `table.column` against the one table the
        // statement reads, if it reads exactly one.
        let table = match analysis.statements.as_slice() {
            [only] if only.tables_read.len() == 1 => {
                only.tables_read[0].rsplit('.').next().map(str::to_owned)
            }
            _ => None,
        };
        let summary = RequestSummary::Sql {
            sql: sql.to_owned(),
            protocol: protocol.to_owned(),
            operations: unique(analysis.statements.iter().flat_map(|s| &s.operations)),
            tables: unique(analysis.statements.iter().flat_map(|s| &s.tables)),
            database: self.database.clone(),
            db_user: self.db_user.clone(),
        };
        let request = Request::Sql(SqlRequest {
            sql: sql.to_owned(),
            sql_shape: analysis.shape,
            statements: analysis.statements,
            parse_error: analysis.parse_error,
            database: self.database.clone(),
            db_user: self.db_user.clone(),
            application_name: self.application_name.clone(),
            protocol,
            credential: self.credential.clone(),
        });
        let ask = Ask::new(request, summary, started).mask_with(self.guard.masker.as_deref());
        let mut verdict = self.guard.guarded.decide(ask).await;
        let rows = match &mut verdict {
            Verdict::Allow { mask, .. } => mask.take().map(|sel| Arc::new(RowMask { sel, table })),
            Verdict::Deny { .. } => None,
        };
        (verdict, rows)
    }

    async fn refused(&self, what: &str, reason: &str) {
        self.guard.refused(what, reason).await;
    }
}

impl PgGuard {
    /// The credential the guard logs in with for this startup, if the
    /// target has any. `Err`: the target injects credentials and none maps
    /// the agent's user (or its secret is unusable).
    async fn injection(
        &self,
        params: &[(String, String)],
    ) -> Result<Option<(Arc<Credential>, Secret)>, String> {
        if self.credentials.is_empty() {
            return Ok(None);
        }
        let user = params
            .iter()
            .find(|(k, _)| k == "user")
            .map_or("", |(_, v)| v.as_str());
        let target = self.guarded.target.name.as_deref().unwrap_or("?");
        let Some(credential) = credentials::for_db_user(&self.credentials, user) else {
            return Err(format!(
                "target `{target}` is logged in to with stored credentials and none is for db user `{user}`"
            ));
        };
        let secret = credential.secret().await.map_err(|e| e.to_string())?;
        Ok(Some((Arc::clone(credential), secret)))
    }

    /// Logs in to the server as the credential's role. `Ok`: the server's
    /// AuthenticationOk (for the agent) and what came after it; `Err`: the
    /// SQLSTATE and reason the agent is told.
    async fn login(
        &self,
        credential: &Credential,
        secret: &Secret,
        params: &[(String, String)],
        rd: &mut Rd,
        wr: &mut Wr,
    ) -> Result<(Bytes, Bytes), (&'static str, String)> {
        let role = credential.config.role.as_deref().unwrap_or_default();
        let name = credential.name();
        let failed = |e: auth::AuthError| {
            let sqlstate = match &e {
                auth::AuthError::Rejected { .. } => "28P01",
                auth::AuthError::Unsupported(_) => "28000",
                auth::AuthError::Protocol(_) | auth::AuthError::Io(_) => "08006",
            };
            (sqlstate, format!("credential `{name}`: {e}"))
        };
        let startup = auth::startup_for(params, role).map_err(failed)?;
        wr.write_all(&startup).await.map_err(|e| failed(e.into()))?;
        let mut rest = BytesMut::new();
        let ok = auth::login(rd, wr, &mut rest, role, secret)
            .await
            .map_err(failed)?;
        debug!(
            credential = name,
            role, "logged in with the stored credential"
        );
        Ok((ok, rest.freeze()))
    }

    /// Records a refusal that needed no policy (the protocol forbids it).
    async fn refused(&self, what: &str, reason: &str) {
        let summary = RequestSummary::Other {
            summary: what.to_owned(),
        };
        self.guarded.refuse(summary, reason, Instant::now()).await;
    }
}

fn unique<'a>(items: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut v: Vec<String> = items.cloned().collect();
    v.sort();
    v.dedup();
    v
}

/// Substitutes what a SQL-level PREPARE defined for each EXECUTE, so policy
/// judges what will actually run.
fn resolve_prepared(
    statements: &mut [StatementInfo],
    prepared: &HashMap<String, StatementInfo>,
    same_query: &[(String, StatementInfo)],
) {
    for s in statements.iter_mut().filter(|s| s.operation == "execute") {
        let Some(name) = s.prepared_name.as_ref() else {
            continue;
        };
        // A PREPARE earlier in the same Query string wins over an older one.
        let found = same_query
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p)
            .or_else(|| prepared.get(name));
        if let Some(p) = found {
            let name = s.prepared_name.clone();
            *s = StatementInfo {
                operation: "execute".into(),
                prepared_name: name,
                ..p.clone()
            };
            if !s.operations.iter().any(|o| o == "execute") {
                s.operations.insert(0, "execute".into());
            }
        }
    }
}

fn refusal(reason: &str) -> Bytes {
    codec::error_response(DENIED, &format!("agentguard: {reason}"))
}

async fn client_to_server(
    session: &Session,
    mut rd: Rd,
    mut buf: BytesMut,
    upstream: &mut Wr,
    _client: &tokio::sync::Mutex<Wr>,
    shared: &Mutex<Shared>,
) -> Result<(), PgError> {
    let push = |p: Pending| {
        shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pending
            .push_back(p)
    };
    // After a refused Parse: drop the batch until Sync (what the server itself
    // does after an error), then report the refusal there.
    let mut discarding: Option<Bytes> = None;
    let mut portal_statement: HashMap<String, (String, Arc<Vec<i16>>)> = HashMap::new();
    let mut statement_rows: HashMap<String, Arc<RowMask>> = HashMap::new();
    let mut statement_audit: HashMap<String, DecisionId> = HashMap::new();
    let mut prepared: HashMap<String, StatementInfo> = HashMap::new();
    loop {
        let msg = match codec::decode(&mut buf, MAX_MESSAGE)? {
            Some(msg) => msg,
            None => {
                if rd.read_buf(&mut buf).await? == 0 {
                    return Ok(());
                }
                continue;
            }
        };
        match msg.tag() {
            tag::QUERY => {
                let text = codec::query_text(&msg)?;
                let mut analysis = sql::analyze(text);
                let defined = prepared_definitions(&analysis);
                resolve_prepared(&mut analysis.statements, &prepared, &defined);
                let (verdict, rows) = session.decide(text, analysis, "simple").await;
                if let Verdict::Allow { audit, .. } = verdict {
                    prepared.extend(defined);
                    push(Pending::Ready {
                        inject: None,
                        rows,
                        audit,
                    });
                    upstream.write_all(&msg.raw).await?;
                } else {
                    push(Pending::Ready {
                        inject: Some(refusal(verdict.reason())),
                        rows: None,
                        audit: None,
                    });
                    upstream.write_all(&codec::sync()).await?;
                }
            }
            tag::PARSE => {
                let (name, text) = codec::parse_message(&msg)?;
                if discarding.is_some() {
                    continue;
                }
                let mut analysis = sql::analyze(text);
                resolve_prepared(&mut analysis.statements, &prepared, &[]);
                let (verdict, rows) = session.decide(text, analysis, "extended").await;
                if let Verdict::Allow { audit, .. } = verdict {
                    match rows {
                        Some(rows) => statement_rows.insert(name.to_owned(), rows),
                        None => statement_rows.remove(name),
                    };
                    match audit {
                        Some(id) => statement_audit.insert(name.to_owned(), id),
                        None => statement_audit.remove(name),
                    };
                    push(Pending::Parsed(name.to_owned()));
                    upstream.write_all(&msg.raw).await?;
                } else {
                    discarding = Some(refusal(verdict.reason()));
                }
            }
            tag::SYNC => {
                push(Pending::Ready {
                    inject: discarding.take(),
                    rows: None,
                    audit: None,
                });
                upstream.write_all(&msg.raw).await?;
            }
            tag::FUNCTION_CALL => {
                // Fast-path calls name a function by OID, out of sight of SQL
                // analysis (lo_export, pg_read_file…): never allowed.
                warn!("denied: fast-path function call");
                session
                    .refused(
                        "fast-path function call",
                        "fast-path function calls are not allowed",
                    )
                    .await;
                push(Pending::Ready {
                    inject: Some(refusal("fast-path function calls are not allowed")),
                    rows: None,
                    audit: None,
                });
                upstream.write_all(&codec::sync()).await?;
            }
            _ if discarding.is_some() && msg.tag() != tag::TERMINATE => {}
            tag::BIND => {
                let (portal, statement) = codec::bind_names(&msg)?;
                let formats = Arc::new(codec::bind_result_formats(&msg)?);
                portal_statement.insert(portal.to_owned(), (statement.to_owned(), formats));
                push(Pending::Bound(portal.to_owned()));
                upstream.write_all(&msg.raw).await?;
            }
            tag::DESCRIBE => {
                let (kind, name) = codec::target_name(&msg)?;
                push(if kind == b'S' {
                    Pending::DescribeStatement(name.to_owned())
                } else {
                    Pending::DescribePortal(name.to_owned())
                });
                upstream.write_all(&msg.raw).await?;
            }
            tag::EXECUTE => {
                let portal = codec::execute_portal(&msg)?.to_owned();
                let (statement, formats) =
                    portal_statement.get(&portal).cloned().unwrap_or_default();
                let rows = statement_rows.get(&statement).cloned();
                let audit = statement_audit.get(&statement).copied();
                push(Pending::Execute {
                    portal,
                    statement,
                    rows,
                    formats,
                    audit,
                });
                upstream.write_all(&msg.raw).await?;
            }
            tag::TERMINATE => {
                upstream.write_all(&msg.raw).await?;
                return Ok(());
            }
            // Password/SASL, CopyData/Done/Fail, Close, Flush: no decision.
            _ => upstream.write_all(&msg.raw).await?,
        }
    }
}

/// The names a Query's PREPARE statements define, with what they run.
fn prepared_definitions(analysis: &sql::SqlAnalysis) -> Vec<(String, StatementInfo)> {
    analysis
        .statements
        .iter()
        .filter(|s| s.operation == "prepare")
        .filter_map(|s| s.prepared_name.clone().map(|n| (n, s.clone())))
        .collect()
}

async fn server_to_client(
    mut rd: Rd,
    client: Arc<tokio::sync::Mutex<Wr>>,
    shared: Arc<Mutex<Shared>>,
    masker: Option<Arc<Engine>>,
    session: SessionHandle,
) -> Result<(), PgError> {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut recording = Recording {
        session,
        current: None,
    };
    let mut statement_columns: HashMap<String, Arc<Vec<Column>>> = HashMap::new();
    let mut portal_columns: HashMap<String, Arc<Vec<Column>>> = HashMap::new();
    let mut current: Option<Arc<Vec<Column>>> = None;
    let mut out = BytesMut::with_capacity(64 * 1024);
    loop {
        // Write what is decoded so far in one go before waiting for more.
        let msg = match codec::decode(&mut buf, MAX_MESSAGE)? {
            Some(m) => m,
            None => {
                if !out.is_empty() {
                    release(&client, &mut out, &recording.session).await?;
                }
                if rd.read_buf(&mut buf).await? == 0 {
                    return Ok(());
                }
                continue;
            }
        };
        // A message rewritten by masking replaces the original bytes.
        let mut replaced: Option<Bytes> = None;
        // What to record about this message (after the lock is released).
        let mut event: Option<(DecisionId, Event)> = None;
        let mut findings: Vec<(Arc<str>, u32)> = Vec::new();
        {
            let mut st = shared.lock().unwrap_or_else(|e| e.into_inner());
            match msg.tag() {
                tag::PARSE_COMPLETE => {
                    if let Some(Pending::Parsed(name)) = st.pending.front() {
                        statement_columns.remove(name);
                        st.pending.pop_front();
                    }
                }
                tag::BIND_COMPLETE => {
                    if let Some(Pending::Bound(portal)) = st.pending.front() {
                        portal_columns.remove(portal);
                        st.pending.pop_front();
                    }
                }
                tag::ROW_DESCRIPTION => {
                    let cols = Arc::new(codec::row_description(&msg)?);
                    event = audit_of(st.pending.front()).map(|id| {
                        (
                            id,
                            Event::Columns(cols.iter().map(|c| c.name.clone()).collect()),
                        )
                    });
                    match st.pending.front() {
                        Some(Pending::DescribeStatement(n)) => {
                            statement_columns.insert(n.clone(), Arc::clone(&cols));
                            st.pending.pop_front();
                        }
                        Some(Pending::DescribePortal(p)) => {
                            portal_columns.insert(p.clone(), Arc::clone(&cols));
                            st.pending.pop_front();
                        }
                        _ => {}
                    }
                    current = Some(cols);
                }
                tag::NO_DATA => {
                    if matches!(
                        st.pending.front(),
                        Some(Pending::DescribeStatement(_) | Pending::DescribePortal(_))
                    ) {
                        st.pending.pop_front();
                    }
                }
                tag::DATA_ROW => {
                    let (columns, rows, formats) = match st.pending.front() {
                        Some(Pending::Execute {
                            portal,
                            statement,
                            rows,
                            formats,
                            ..
                        }) => (
                            portal_columns
                                .get(portal)
                                .or_else(|| statement_columns.get(statement))
                                .cloned(),
                            rows.clone(),
                            Arc::clone(formats),
                        ),
                        Some(Pending::Ready { rows, .. }) => {
                            (current.clone(), rows.clone(), Arc::default())
                        }
                        _ => (current.clone(), None, Arc::default()),
                    };
                    if let (Some(engine), Some(rows)) = (&masker, rows) {
                        replaced = mask_row(
                            engine,
                            &msg,
                            columns.as_deref().map(Vec::as_slice),
                            &formats,
                            &rows,
                            &mut findings,
                        )?;
                    }
                    if let Some(id) = audit_of(st.pending.front()) {
                        // Decoded from what goes out (masked), and only
                        // while under the recording cap.
                        let values = recording.wants_row(id).then(|| {
                            let sent = codec::Message {
                                raw: replaced.clone().unwrap_or_else(|| msg.raw.clone()),
                            };
                            row_values(&sent, columns.as_deref().map(Vec::as_slice), &formats)
                        });
                        event = Some((id, Event::Row(values.flatten())));
                    }
                }
                tag::COPY_DATA => {
                    // COPY … TO STDOUT rows: text lines without column names,
                    // so only the content detectors apply.
                    if let (
                        Some(engine),
                        Some(Pending::Ready {
                            rows: Some(rows), ..
                        }),
                    ) = (&masker, st.pending.front())
                    {
                        let m = engine.mask_bytes(msg.body(), &FieldContext::text(), &rows.sel);
                        findings.extend(m.findings.iter().map(|f| (f.entity.clone(), f.count)));
                        if let std::borrow::Cow::Owned(v) = m.value {
                            replaced = Some(codec::build(tag::COPY_DATA, &v));
                        }
                    }
                    if let Some(id) = audit_of(st.pending.front()) {
                        let sent = replaced.as_ref().map_or(msg.body(), |r| &r[5..]);
                        event = Some((id, Event::Text(String::from_utf8_lossy(sent).into_owned())));
                    }
                }
                tag::COMMAND_COMPLETE | tag::PORTAL_SUSPENDED | tag::EMPTY_QUERY => {
                    let front = st.pending.front();
                    if let Some(id) = audit_of(front) {
                        let tag = match msg.tag() {
                            tag::COMMAND_COMPLETE => command_tag(&msg),
                            tag::PORTAL_SUSPENDED => "portal suspended".to_owned(),
                            _ => "empty query".to_owned(),
                        };
                        let last = matches!(front, Some(Pending::Execute { .. }));
                        event = Some((id, Event::Complete { tag, last }));
                    }
                    if matches!(st.pending.front(), Some(Pending::Execute { .. })) {
                        st.pending.pop_front();
                    }
                    current = None;
                }
                tag::ERROR_RESPONSE => {
                    let front = st.pending.front();
                    if let Some(id) = audit_of(front) {
                        let (code, message) = codec::error_fields(&msg);
                        let last = matches!(front, Some(Pending::Execute { .. }));
                        event = Some((
                            id,
                            Event::Error {
                                code,
                                message,
                                last,
                            },
                        ));
                    }
                    // The server skips the rest of the batch up to Sync.
                    while st
                        .pending
                        .front()
                        .is_some_and(|p| !matches!(p, Pending::Ready { .. }))
                    {
                        st.pending.pop_front();
                    }
                }
                tag::READY_FOR_QUERY => {
                    if let Some(id) = audit_of(st.pending.front()) {
                        event = Some((id, Event::Done));
                    }
                    while let Some(p) = st.pending.pop_front() {
                        if let Pending::Ready { inject, .. } = p {
                            if let Some(inject) = inject {
                                out.extend_from_slice(&inject);
                            }
                            break;
                        }
                    }
                    current = None;
                }
                _ => {}
            }
        }
        if !findings.is_empty()
            && let Some((id, _)) = &event
        {
            recording.masked(*id, &findings).await;
        }
        if let Some((id, ev)) = event {
            recording.record(id, ev).await;
        }
        out.extend_from_slice(replaced.as_deref().unwrap_or(&msg.raw));
        if out.len() >= 64 * 1024 {
            release(&client, &mut out, &recording.session).await?;
        }
    }
}

/// Writes `out` to the client once the decisions it answers are committed,
/// so a crash never loses the record of a statement the client saw answered.
async fn release(
    client: &tokio::sync::Mutex<Wr>,
    out: &mut BytesMut,
    session: &SessionHandle,
) -> Result<(), PgError> {
    session
        .committed()
        .await
        .map_err(|e| std::io::Error::other(format!("audit: {e}")))?;
    client.lock().await.write_all(out).await?;
    out.clear();
    Ok(())
}

/// Types whose binary form is their text (so detectors can read it).
fn is_text_type(oid: u32) -> bool {
    const TEXTLIKE: [u32; 8] = [25, 1043, 1042, 19, 114, 3802, 705, 142];
    TEXTLIKE.contains(&oid)
}

/// Masks one DataRow; `Ok(None)` when nothing changed (the original bytes
/// go out). Text-format values and binary values of text types are masked
/// in place; a binary value of another type that a rule selects becomes NULL
/// (a token cannot be written into a binary integer).
fn mask_row(
    engine: &Engine,
    msg: &codec::Message,
    columns: Option<&[Column]>,
    formats: &[i16],
    rows: &RowMask,
    findings: &mut Vec<(Arc<str>, u32)>,
) -> Result<Option<Bytes>, PgError> {
    let values = codec::data_row(msg)?;
    let mut masked: Vec<Option<std::borrow::Cow<'_, [u8]>>> = Vec::with_capacity(values.len());
    let mut changed = false;
    for (i, value) in values.iter().enumerate() {
        let Some(range) = value else {
            masked.push(None);
            continue;
        };
        let raw = &msg.raw[range.clone()];
        let column = columns.and_then(|c| c.get(i));
        let format = match (column, formats) {
            (Some(c), _) => c.format,
            (None, [one]) => *one,
            (None, many) => many.get(i).copied().unwrap_or(0),
        };
        let name = column.map(|c| c.name.as_str());
        let path = name
            .zip(rows.table.as_deref())
            .map(|(n, t)| format!("{t}.{n}"));
        let ctx = match name {
            Some(n) => FieldContext::column(n, path.as_deref()),
            None => FieldContext::text(),
        };
        let m = engine.mask_bytes(raw, &ctx, &rows.sel);
        findings.extend(m.findings.iter().map(|f| (f.entity.clone(), f.count)));
        let binary_opaque = format == 1 && !column.is_some_and(|c| is_text_type(c.type_oid));
        match m.value {
            std::borrow::Cow::Borrowed(_) => masked.push(Some(std::borrow::Cow::Borrowed(raw))),
            _ if m.null || binary_opaque => {
                changed = true;
                masked.push(None);
            }
            std::borrow::Cow::Owned(v) => {
                changed = true;
                masked.push(Some(std::borrow::Cow::Owned(v)));
            }
        }
    }
    if !changed {
        return Ok(None);
    }
    Ok(Some(codec::build_data_row(
        masked.iter().map(|v| v.as_deref()),
    )))
}

/// What one server message means for the recording.
enum Event {
    Columns(Vec<String>),
    /// A row as forwarded; `None` past the recording cap (counted only).
    Row(Option<Vec<Option<String>>>),
    Text(String),
    /// One result done; `last`: the response to the decision is too.
    Complete {
        tag: String,
        last: bool,
    },
    Error {
        code: String,
        message: String,
        last: bool,
    },
    /// ReadyForQuery: the response to a simple Query is over.
    Done,
}

/// The response being recorded (one decision's), switched when the
/// server moves on to the next decision's response.
struct Recording {
    session: SessionHandle,
    current: Option<ResultRecorder>,
}

impl Recording {
    fn wants_row(&self, id: DecisionId) -> bool {
        self.current
            .as_ref()
            .is_none_or(|r| r.decision != id || r.wants_row())
    }

    async fn recorder(&mut self, id: DecisionId) -> &mut ResultRecorder {
        if self.current.as_ref().is_some_and(|r| r.decision != id)
            && let Some(done) = self.current.take()
        {
            done.finish().await;
        }
        self.current
            .get_or_insert_with(|| self.session.result_recorder(id))
    }

    async fn masked(&mut self, id: DecisionId, findings: &[(Arc<str>, u32)]) {
        self.recorder(id)
            .await
            .masked(findings.iter().map(|(e, n)| (&**e, u64::from(*n))));
    }

    async fn record(&mut self, id: DecisionId, event: Event) {
        let r = self.recorder(id).await;
        let last = match event {
            Event::Columns(names) => {
                r.columns(names).await;
                false
            }
            Event::Row(values) => {
                r.row(values).await;
                false
            }
            Event::Text(text) => {
                r.text(text).await;
                false
            }
            Event::Complete { tag, last } => {
                r.complete(tag).await;
                last
            }
            Event::Error {
                code,
                message,
                last,
            } => {
                r.error(code, message).await;
                last
            }
            Event::Done => true,
        };
        if last && let Some(done) = self.current.take() {
            done.finish().await;
        }
    }
}

/// The decision a server message answers, if it is being recorded.
fn audit_of(front: Option<&Pending>) -> Option<DecisionId> {
    match front {
        Some(Pending::Ready { audit, .. } | Pending::Execute { audit, .. }) => *audit,
        _ => None,
    }
}

/// CommandComplete's tag (`SELECT 2`).
fn command_tag(msg: &codec::Message) -> String {
    let body = msg.body();
    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
    String::from_utf8_lossy(&body[..end]).into_owned()
}

/// A forwarded DataRow as text for the recording. Binary values of
/// non-text types are not decoded: they show as `<binary N bytes>`.
fn row_values(
    msg: &codec::Message,
    columns: Option<&[Column]>,
    formats: &[i16],
) -> Option<Vec<Option<String>>> {
    let values = codec::data_row(msg).ok()?;
    Some(
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let range = v.clone()?;
                let raw = msg.raw.get(range)?;
                let column = columns.and_then(|c| c.get(i));
                let format = match (column, formats) {
                    (Some(c), _) => c.format,
                    (None, [one]) => *one,
                    (None, many) => many.get(i).copied().unwrap_or(0),
                };
                if format == 1 && !column.is_some_and(|c| is_text_type(c.type_oid)) {
                    Some(format!("<binary {} bytes>", raw.len()))
                } else {
                    Some(String::from_utf8_lossy(raw).into_owned())
                }
            })
            .collect(),
    )
}
