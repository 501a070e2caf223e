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
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use agentguard_mask::{Engine, FieldContext, Selection};
use bytes::{Bytes, BytesMut};
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};
use tracing::{debug, info, warn};

use super::{
    codec::{self, Column, Startup, tag},
    sql::{self, StatementInfo},
};
use crate::{
    decide::Target,
    decide::{Action, Decide, Decision, Input, Request},
    identity::Identity,
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
    pub statements: Vec<StatementInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parse_error: Option<String>,
    pub database: Option<String>,
    pub db_user: Option<String>,
    pub application_name: Option<String>,
    /// "simple" (Query) or "extended" (Parse).
    pub protocol: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("protocol error: {0}")]
    Codec(#[from] codec::CodecError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub struct PgGuard {
    pub decider: Arc<dyn Decide>,
    pub identity: Identity,
    pub target: Target,
    /// How long a statement whose decision is `approve` is held before it is
    /// refused (approvals are granted through the approvals CLI).
    pub approval_timeout: Duration,
    pub masker: Option<Arc<Engine>>,
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
    },
}

#[derive(Default)]
struct Shared {
    pending: VecDeque<Pending>,
}

pub async fn run(guard: PgGuard, client: TcpStream, upstream: TcpStream) -> Result<(), PgError> {
    let (mut client_rd, mut client_wr) = client.into_split();
    let (upstream_rd, mut upstream_wr) = upstream.into_split();
    let mut buf = BytesMut::with_capacity(8 * 1024);

    let params = loop {
        match codec::decode_startup(&mut buf) {
            Ok(Some(Startup::SslRequest | Startup::GssEncRequest)) => {
                // No TLS towards the agent yet: 'N' tells the client to go on
                // in plaintext (over loopback).
                client_wr.write_all(b"N").await?;
            }
            Ok(Some(Startup::Cancel(raw))) => {
                // A cancel arrives on its own connection to the same server;
                // its key is the server's own, so it is forwarded unchanged.
                upstream_wr.write_all(&raw).await?;
                debug!("cancel request forwarded");
                return Ok(());
            }
            Ok(Some(Startup::Startup { raw, params })) => {
                upstream_wr.write_all(&raw).await?;
                break params;
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
    let session = Session {
        database: param("database").or_else(|| param("user")),
        db_user: param("user"),
        application_name: param("application_name"),
        guard,
    };
    info!(db_user = ?session.db_user, database = ?session.database, "postgres session");

    let shared = Arc::new(Mutex::new(Shared::default()));
    let client_wr = Arc::new(tokio::sync::Mutex::new(client_wr));
    let s2c = tokio::spawn(server_to_client(
        upstream_rd,
        Arc::clone(&client_wr),
        Arc::clone(&shared),
        session.guard.masker.clone(),
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
    db_user: Option<String>,
    application_name: Option<String>,
}

impl Session {
    /// The decision for one Query / Parse, and, when allowed, how to mask
    /// its rows. Mask rules that do not compile deny: masking less than the
    /// policy asked is not an option.
    async fn decide(
        &self,
        sql: &str,
        analysis: sql::SqlAnalysis,
        protocol: &'static str,
    ) -> (Decision, Option<Arc<RowMask>>) {
        let table = match analysis.statements.as_slice() {
            [only] if only.tables_read.len() == 1 => {
                only.tables_read[0].rsplit('.').next().map(str::to_owned)
            }
            _ => None,
        };
        let decision = self.decide_only(sql, analysis, protocol).await;
        if decision.action != Action::Allow {
            return (decision, None);
        }
        let Some(engine) = &self.guard.masker else {
            return (decision, None);
        };
        match engine.selection(self.guard.target.name.as_deref(), &decision.mask) {
            Ok(sel) => (decision, Some(Arc::new(RowMask { sel, table }))),
            Err(e) => {
                let reason = format!("the policy's mask rules are invalid: {e}");
                warn!(sql, %reason, "denied");
                (Decision::deny(reason), None)
            }
        }
    }

    async fn decide_only(
        &self,
        sql: &str,
        analysis: sql::SqlAnalysis,
        protocol: &'static str,
    ) -> Decision {
        let request = SqlRequest {
            sql: sql.to_owned(),
            statements: analysis.statements,
            parse_error: analysis.parse_error,
            database: self.database.clone(),
            db_user: self.db_user.clone(),
            application_name: self.application_name.clone(),
            protocol,
        };
        let input = Input {
            identity: self.guard.identity.clone(),
            target: self.guard.target.clone(),
            request: Request::Sql(request),
        };
        let decision = self.guard.decider.decide(&input);
        match decision.action {
            Action::Allow => debug!(sql, "allowed"),
            Action::Deny => warn!(sql, reason = %decision.reason, "denied"),
            Action::Approve => {
                warn!(sql, reason = %decision.reason, timeout = ?self.guard.approval_timeout, "held for approval");
                tokio::time::sleep(self.guard.approval_timeout).await;
                let reason = format!(
                    "approval required ({}), none given within {}s",
                    decision.reason,
                    self.guard.approval_timeout.as_secs()
                );
                warn!(sql, %reason, "denied");
                return Decision::deny(reason);
            }
        }
        decision
    }
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
    mut rd: OwnedReadHalf,
    mut buf: BytesMut,
    upstream: &mut OwnedWriteHalf,
    _client: &tokio::sync::Mutex<OwnedWriteHalf>,
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
                let (decision, rows) = session.decide(text, analysis, "simple").await;
                if decision.action == Action::Allow {
                    prepared.extend(defined);
                    push(Pending::Ready { inject: None, rows });
                    upstream.write_all(&msg.raw).await?;
                } else {
                    push(Pending::Ready {
                        inject: Some(refusal(&decision.reason)),
                        rows: None,
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
                let (decision, rows) = session.decide(text, analysis, "extended").await;
                if decision.action == Action::Allow {
                    match rows {
                        Some(rows) => statement_rows.insert(name.to_owned(), rows),
                        None => statement_rows.remove(name),
                    };
                    push(Pending::Parsed(name.to_owned()));
                    upstream.write_all(&msg.raw).await?;
                } else {
                    discarding = Some(refusal(&decision.reason));
                }
            }
            tag::SYNC => {
                push(Pending::Ready {
                    inject: discarding.take(),
                    rows: None,
                });
                upstream.write_all(&msg.raw).await?;
            }
            tag::FUNCTION_CALL => {
                // Fast-path calls name a function by OID, out of sight of SQL
                // analysis (lo_export, pg_read_file…): never allowed.
                warn!("denied: fast-path function call");
                push(Pending::Ready {
                    inject: Some(refusal("fast-path function calls are not allowed")),
                    rows: None,
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
                push(Pending::Execute {
                    portal,
                    statement,
                    rows,
                    formats,
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
    mut rd: OwnedReadHalf,
    client: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    shared: Arc<Mutex<Shared>>,
    masker: Option<Arc<Engine>>,
) -> Result<(), PgError> {
    let mut buf = BytesMut::with_capacity(64 * 1024);
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
                    client.lock().await.write_all(&out).await?;
                    out.clear();
                }
                if rd.read_buf(&mut buf).await? == 0 {
                    return Ok(());
                }
                continue;
            }
        };
        // A message rewritten by masking replaces the original bytes.
        let mut replaced: Option<Bytes> = None;
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
                        )?;
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
                        if let std::borrow::Cow::Owned(v) = m.value {
                            replaced = Some(codec::build(tag::COPY_DATA, &v));
                        }
                    }
                }
                tag::COMMAND_COMPLETE | tag::PORTAL_SUSPENDED | tag::EMPTY_QUERY => {
                    if matches!(st.pending.front(), Some(Pending::Execute { .. })) {
                        st.pending.pop_front();
                    }
                    current = None;
                }
                tag::ERROR_RESPONSE => {
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
        out.extend_from_slice(replaced.as_deref().unwrap_or(&msg.raw));
        if out.len() >= 64 * 1024 {
            client.lock().await.write_all(&out).await?;
            out.clear();
        }
    }
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
