//! One guarded Redis connection.
//!
//! Two tasks: client→server decides each command in order and forwards the
//! allowed ones as sent; server→client answers them in the same order, from
//! a FIFO of what is expected: the server's reply (masked when the decision
//! says so) or, for a refused command that never reached the server, our
//! `-NOPERM agentguard: …` in its place. Data the server sends on its own
//! (RESP3 pushes, RESP2 pub/sub messages while subscribed, MONITOR's feed)
//! passes without taking a place in the FIFO.
//!
//! Transactions: a refused command inside MULTI gets -NOPERM (the client
//! saw +QUEUED for the others); its EXEC goes to the server as DISCARD and
//! the client gets -EXECABORT, as Redis does when queueing fails.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Instant,
};

use agentguard_mask::{Engine, FieldContext, Selection};
use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::Notify,
};
use tracing::{debug, info, warn};

use super::{
    codec::{self, CodecError, Decoder, Frame, Kind, Node},
    request::RedisRequest,
};
use crate::{
    audit::{DecisionId, RequestSummary, ResultRecorder, SessionHandle},
    decide::Request,
    pipeline::{Ask, Guarded, Verdict},
};

/// Rendered reply values longer than this are cut in the recording.
const RECORD_VALUE: usize = 4096;
/// Forwarded bytes are written once this much is buffered, or when no
/// more whole frames are buffered.
const FLUSH: usize = 64 << 10;

const EXECABORT: &str = "EXECABORT agentguard: transaction discarded because a command was refused";

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("protocol error: {0}")]
    Client(CodecError),
    #[error("server protocol error: {0}")]
    Server(CodecError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("audit: {0}")]
    Audit(String),
}

pub struct RedisGuard {
    /// Identity, target, recording: what the pipeline decides with.
    pub guarded: Guarded,
    pub masker: Option<Arc<Engine>>,
}

/// How to mask one command's reply.
#[derive(Debug)]
struct ReplyMask {
    sel: Selection,
    command: String,
    keys: Vec<String>,
    /// HMGET's field names (the reply's elements answer them in order).
    fields: Vec<String>,
}

#[derive(Debug)]
enum Masking {
    One(Arc<ReplyMask>),
    /// EXEC: element i answers the i-th queued command.
    Exec(Vec<Option<Arc<ReplyMask>>>),
}

/// What comes next in the client's reply stream.
#[derive(Debug)]
enum Pending {
    /// The server's reply to a forwarded command.
    Reply {
        audit: Option<DecisionId>,
        mask: Option<Masking>,
        /// Sent to the client instead of the server's reply (EXEC turned
        /// into DISCARD).
        replace: Option<Bytes>,
        /// MONITOR: after its +OK the server only streams.
        monitor: bool,
    },
    /// Our own answer; nothing comes from the server for it.
    Answer(Bytes),
}

#[derive(Default)]
struct Shared {
    pending: VecDeque<Pending>,
    /// A (un)subscribe command was sent: RESP2 arrays shaped like pub/sub
    /// messages are the server's own, not replies.
    pubsub: bool,
    /// How to mask pub/sub messages (the subscribing command's decision).
    push_mask: Option<Arc<ReplyMask>>,
}

type Locked = Mutex<Shared>;

fn lock(shared: &Locked) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

fn refusal(reason: &str) -> Bytes {
    codec::error(&format!("NOPERM agentguard: {reason}"))
}

pub async fn run(
    guard: RedisGuard,
    client: TcpStream,
    upstream: TcpStream,
) -> Result<(), RedisError> {
    info!("redis session");
    let (client_rd, client_wr) = client.into_split();
    let (upstream_rd, upstream_wr) = upstream.into_split();
    let shared = Arc::new(Locked::default());
    let notify = Arc::new(Notify::new());
    let mut s2c = tokio::spawn(server_to_client(
        upstream_rd,
        client_wr,
        Arc::clone(&shared),
        Arc::clone(&notify),
        guard.masker.clone(),
        guard.guarded.session.clone(),
    ));
    let mut c2s = ClientSide {
        guard: &guard,
        shared: &shared,
        notify: &notify,
        upstream: upstream_wr,
        out: BytesMut::with_capacity(FLUSH),
        in_multi: false,
        poisoned: false,
        queued: Vec::new(),
        db: 0,
    };
    let result = tokio::select! {
        r = c2s.run(client_rd) => r,
        r = &mut s2c => {
            // The server side ended first (QUIT, the server closed, the
            // agent stopped reading).
            return r.unwrap_or_else(|e| Err(std::io::Error::other(e).into()));
        }
    };
    if let Err(e) = &result {
        warn!("redis session ended: {e}");
        // What was allowed before the bad frame still goes, and is answered.
        let _ = c2s.flush().await;
        if let RedisError::Client(c) = e {
            let reason = format!("protocol error: {c}");
            let summary = RequestSummary::Other {
                summary: "redis command".into(),
            };
            guard.guarded.refuse(summary, &reason, Instant::now()).await;
            // After the replies already owed, then the connection closes.
            lock(&shared)
                .pending
                .push_back(Pending::Answer(codec::error(&format!(
                    "ERR agentguard: {reason}"
                ))));
            notify.notify_one();
        }
    }
    let _ = c2s.upstream.shutdown().await;
    match s2c.await {
        Ok(Err(e)) if result.is_ok() => Err(e),
        _ => result,
    }
}

struct ClientSide<'a> {
    guard: &'a RedisGuard,
    shared: &'a Locked,
    notify: &'a Notify,
    upstream: OwnedWriteHalf,
    /// Allowed commands not yet written to the server.
    out: BytesMut,
    in_multi: bool,
    /// A command queued in this MULTI was refused.
    poisoned: bool,
    /// The masks of the commands queued in this MULTI, in order.
    queued: Vec<Option<Arc<ReplyMask>>>,
    db: i64,
}

fn is_subscribe(command: &str) -> bool {
    matches!(command, "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE")
}

fn is_unsubscribe(command: &str) -> bool {
    matches!(command, "UNSUBSCRIBE" | "PUNSUBSCRIBE" | "SUNSUBSCRIBE")
}

impl ClientSide<'_> {
    async fn run(&mut self, mut rd: OwnedReadHalf) -> Result<(), RedisError> {
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let mut decoder = Decoder::default();
        loop {
            let cmd = match decoder.command(&mut buf).map_err(RedisError::Client)? {
                Some(c) => c,
                None => {
                    self.flush().await?;
                    if rd.read_buf(&mut buf).await? == 0 {
                        return Ok(());
                    }
                    continue;
                }
            };
            // Redis ignores empty commands without a reply.
            if cmd.args.is_empty() {
                continue;
            }
            self.command(cmd).await?;
            if self.out.len() >= FLUSH {
                self.flush().await?;
            }
        }
    }

    async fn flush(&mut self) -> Result<(), RedisError> {
        if !self.out.is_empty() {
            self.upstream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    fn push(&self, p: Pending) {
        let answer = matches!(p, Pending::Answer(_));
        lock(self.shared).pending.push_back(p);
        if answer {
            self.notify.notify_one();
        }
    }

    fn expect(&self, audit: Option<DecisionId>, mask: Option<Masking>) {
        self.push(Pending::Reply {
            audit,
            mask,
            replace: None,
            monitor: false,
        });
    }

    async fn command(&mut self, cmd: codec::Command) -> Result<(), RedisError> {
        let started = Instant::now();
        let argv: Vec<&[u8]> = cmd.args.iter().map(|a| &a[..]).collect();
        let request = RedisRequest::new(&argv, cmd.raw.len(), cmd.inline, self.in_multi, self.db);
        let name = request.command.clone();
        let summary = request.summary();
        let keys = request.keys.clone();
        let fields = if matches!(name.as_str(), "HMGET" | "HGET") {
            request.args.iter().skip(1).cloned().collect()
        } else {
            Vec::new()
        };
        let unsupported = RedisRequest::too_large(&argv).or_else(|| {
            (name == "CLIENT"
                && request.subcommand.as_deref() == Some("REPLY")
                && !request
                    .args
                    .get(1)
                    .is_some_and(|a| a.eq_ignore_ascii_case("ON")))
            .then(|| "CLIENT REPLY OFF/SKIP is not supported through agentguard".to_owned())
        });
        let verdict = match unsupported {
            Some(reason) => {
                self.guard.guarded.refuse(summary, &reason, started).await;
                Verdict::Deny { reason }
            }
            None => {
                let ask = Ask::new(Request::Redis(request), summary, started)
                    .mask_with(self.guard.masker.as_deref());
                self.guard.guarded.decide(ask).await
            }
        };
        let transaction_end = self.in_multi && matches!(name.as_str(), "EXEC" | "DISCARD");
        let (mask, audit) = match verdict {
            Verdict::Deny { reason } => {
                if name == "EXEC" && self.in_multi {
                    // The server holds the queued commands: drop them there.
                    self.end_transaction();
                    return self.discard(refusal(&reason)).await;
                }
                if self.in_multi && !matches!(name.as_str(), "MULTI" | "DISCARD") {
                    self.poisoned = true;
                }
                self.push(Pending::Answer(refusal(&reason)));
                return Ok(());
            }
            Verdict::Allow { mask, audit, .. } => (
                mask.map(|sel| {
                    Arc::new(ReplyMask {
                        sel,
                        command: name.clone(),
                        keys,
                        fields,
                    })
                }),
                audit,
            ),
        };
        if transaction_end {
            let poisoned = self.poisoned;
            let queued = std::mem::take(&mut self.queued);
            self.end_transaction();
            if name == "EXEC" {
                if poisoned {
                    return self.discard(codec::error(EXECABORT)).await;
                }
                self.expect(audit, Some(Masking::Exec(queued)));
            } else {
                self.expect(audit, None);
            }
        } else if self.in_multi && !matches!(name.as_str(), "MULTI" | "WATCH" | "UNWATCH") {
            // Answered +QUEUED now, its result comes in EXEC's array.
            self.queued.push(mask);
            self.expect(audit, None);
        } else if (is_subscribe(&name) && cmd.args.len() > 1) || is_unsubscribe(&name) {
            // Confirmed by pushes (one per channel), not by a reply.
            let mut st = lock(self.shared);
            st.pubsub = true;
            if mask.is_some() {
                st.push_mask = mask;
            }
        } else {
            match name.as_str() {
                "MULTI" => {
                    self.in_multi = true;
                    self.poisoned = false;
                    self.queued.clear();
                }
                "SELECT" => {
                    if let Some(db) = argv
                        .get(1)
                        .and_then(|d| std::str::from_utf8(d).ok())
                        .and_then(|d| d.parse().ok())
                    {
                        self.db = db;
                    }
                }
                _ => {}
            }
            self.push(Pending::Reply {
                audit,
                mask: mask.map(Masking::One),
                replace: None,
                monitor: name == "MONITOR",
            });
        }
        self.out.extend_from_slice(&cmd.raw);
        Ok(())
    }

    fn end_transaction(&mut self) {
        self.in_multi = false;
        self.poisoned = false;
        self.queued.clear();
    }

    /// Sends DISCARD in place of EXEC; the client gets `answer` instead of
    /// its +OK.
    async fn discard(&mut self, answer: Bytes) -> Result<(), RedisError> {
        self.push(Pending::Reply {
            audit: None,
            mask: None,
            replace: Some(answer),
            monitor: false,
        });
        self.out.extend_from_slice(&codec::command(&[b"DISCARD"]));
        Ok(())
    }
}

/// Whether a RESP2 array is a pub/sub message or (un)subscribe
/// confirmation, and for an unsubscribe, whether no subscription is left.
fn pubsub_shape(frame: &Frame) -> Option<bool> {
    let Kind::Array(items) = &frame.node.kind else {
        return None;
    };
    let kind = items.first()?.text(&frame.raw)?.to_ascii_lowercase();
    match (kind.as_slice(), items.len()) {
        (b"message" | b"smessage", 3) | (b"pmessage", 4) => Some(false),
        (b"subscribe" | b"psubscribe" | b"ssubscribe", 3) => Some(false),
        (b"unsubscribe" | b"punsubscribe" | b"sunsubscribe", 3) => {
            Some(items[2].kind == Kind::Integer(0))
        }
        _ => None,
    }
}

async fn server_to_client(
    mut rd: OwnedReadHalf,
    mut client: OwnedWriteHalf,
    shared: Arc<Locked>,
    notify: Arc<Notify>,
    masker: Option<Arc<Engine>>,
    session: SessionHandle,
) -> Result<(), RedisError> {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut out = BytesMut::with_capacity(FLUSH);
    let mut decoder = Decoder::default();
    let mut monitoring = false;
    loop {
        drain_answers(&shared, &mut out);
        let frame = match decoder.reply(&mut buf).map_err(RedisError::Server)? {
            Some(f) => f,
            None => {
                if !out.is_empty() {
                    release(&mut client, &mut out, &session).await?;
                }
                tokio::select! {
                    n = rd.read_buf(&mut buf) => {
                        if n? == 0 {
                            drain_answers(&shared, &mut out);
                            if !out.is_empty() {
                                release(&mut client, &mut out, &session).await?;
                            }
                            return Ok(());
                        }
                    }
                    () = notify.notified() => {}
                }
                continue;
            }
        };
        if monitoring {
            out.extend_from_slice(&frame.raw);
        } else {
            let push = {
                let mut st = lock(&shared);
                let push = match &frame.node.kind {
                    Kind::Push(_) => true,
                    _ if st.pubsub => match pubsub_shape(&frame) {
                        Some(none_left) => {
                            if none_left {
                                st.pubsub = false;
                            }
                            true
                        }
                        None => false,
                    },
                    _ => false,
                };
                if push {
                    Some(st.push_mask.clone())
                } else {
                    None
                }
            };
            match push {
                Some(mask) => {
                    let masked = match (&masker, mask) {
                        (Some(engine), Some(m)) => {
                            mask_frame(engine, &frame, &Masking::One(m), &mut Vec::new())
                        }
                        _ => None,
                    };
                    out.extend_from_slice(masked.as_deref().unwrap_or(&frame.raw));
                }
                None => {
                    let front = lock(&shared).pending.pop_front();
                    let Some(Pending::Reply {
                        audit,
                        mask,
                        replace,
                        monitor,
                    }) = front
                    else {
                        debug!("reply with no command waiting for it, forwarded");
                        out.extend_from_slice(&frame.raw);
                        continue;
                    };
                    monitoring = monitor && matches!(frame.node.kind, Kind::Simple(_));
                    let mut findings = Vec::new();
                    let masked = match (&masker, &mask, &replace) {
                        (Some(engine), Some(m), None) => {
                            mask_frame(engine, &frame, m, &mut findings)
                        }
                        _ => None,
                    };
                    let sent = replace.or(masked);
                    if let Some(id) = audit {
                        let mut r = session.result_recorder(id);
                        r.masked(findings.iter().map(|(e, n)| (&**e, u64::from(*n))));
                        match &sent {
                            Some(bytes) => {
                                match Decoder::default().reply(&mut BytesMut::from(&bytes[..])) {
                                    Ok(Some(f)) => record(&mut r, &f).await,
                                    _ => r.complete("reply".into()).await,
                                }
                            }
                            None => record(&mut r, &frame).await,
                        }
                        r.finish().await;
                    }
                    out.extend_from_slice(sent.as_deref().unwrap_or(&frame.raw));
                }
            }
        }
        if out.len() >= FLUSH {
            release(&mut client, &mut out, &session).await?;
        }
    }
}

/// Our answers due now, before the next reply.
fn drain_answers(shared: &Locked, out: &mut BytesMut) {
    let mut st = lock(shared);
    while let Some(Pending::Answer(_)) = st.pending.front() {
        if let Some(Pending::Answer(a)) = st.pending.pop_front() {
            out.extend_from_slice(&a);
        }
    }
}

/// Writes `out` to the client once the decisions it answers are committed,
/// so a crash never loses the record of a command the client saw answered.
async fn release(
    client: &mut OwnedWriteHalf,
    out: &mut BytesMut,
    session: &SessionHandle,
) -> Result<(), RedisError> {
    session
        .committed()
        .await
        .map_err(|e| RedisError::Audit(e.to_string()))?;
    client.write_all(out).await?;
    out.clear();
    Ok(())
}

/// Where a reply value sits, for key-pattern rules: Redis values are
/// masked as columns, a string under key K as column `K`, a hash field F of
/// key K as column `F` with path `K.F`.
#[derive(Clone, Copy)]
enum Place<'a> {
    Text,
    Key(&'a str),
    Field(&'a str, &'a str),
}

type Findings = Vec<(Arc<str>, u32)>;

/// The reply with its string values masked; `None` when nothing changed.
fn mask_frame(
    engine: &Engine,
    frame: &Frame,
    masking: &Masking,
    findings: &mut Findings,
) -> Option<Bytes> {
    let mut edits = Vec::new();
    match masking {
        Masking::One(m) => mask_node(engine, &frame.raw, &frame.node, m, &mut edits, findings),
        Masking::Exec(queued) => {
            let items = match &frame.node.kind {
                Kind::Array(items) => items.as_slice(),
                _ => &[],
            };
            for (item, m) in items.iter().zip(queued) {
                if let Some(m) = m {
                    mask_node(engine, &frame.raw, item, m, &mut edits, findings);
                }
            }
        }
    }
    (!edits.is_empty()).then(|| codec::splice(&frame.raw, edits))
}

/// Masks one command's reply, placing its values by the command.
fn mask_node<'n>(
    engine: &Engine,
    raw: &[u8],
    node: &'n Node,
    m: &ReplyMask,
    edits: &mut Vec<(&'n Node, Vec<u8>)>,
    findings: &mut Findings,
) {
    let key = m.keys.first().map(String::as_str);
    let items = node.elements().unwrap_or_default();
    let is_map = matches!(node.kind, Kind::Map(_));
    if is_map || (m.command == "HGETALL" && matches!(node.kind, Kind::Array(_))) {
        for pair in items.chunks(2) {
            let [k, v] = pair else { continue };
            let field = k.text(raw).map(String::from_utf8_lossy);
            let place = match (key, field.as_deref()) {
                (Some(key), Some(f)) => Place::Field(key, f),
                (None, Some(f)) => Place::Key(f),
                _ => Place::Text,
            };
            mask_tree(engine, raw, v, place, &m.sel, edits, findings);
        }
        return;
    }
    match (m.command.as_str(), &node.kind) {
        ("MGET", Kind::Array(items)) => {
            for (item, k) in items.iter().zip(&m.keys) {
                mask_tree(engine, raw, item, Place::Key(k), &m.sel, edits, findings);
            }
        }
        ("HMGET", Kind::Array(items)) => {
            for (item, f) in items.iter().zip(&m.fields) {
                let place = key.map_or(Place::Text, |k| Place::Field(k, f));
                mask_tree(engine, raw, item, place, &m.sel, edits, findings);
            }
        }
        ("HGET", _) => {
            let place = match (key, m.fields.first().or(None)) {
                (Some(k), Some(f)) => Place::Field(k, f),
                (Some(k), None) => Place::Key(k),
                _ => Place::Text,
            };
            mask_tree(engine, raw, node, place, &m.sel, edits, findings);
        }
        _ => {
            let place = key.map_or(Place::Text, Place::Key);
            mask_tree(engine, raw, node, place, &m.sel, edits, findings);
        }
    }
}

fn mask_tree<'n>(
    engine: &Engine,
    raw: &[u8],
    node: &'n Node,
    place: Place<'_>,
    sel: &Selection,
    edits: &mut Vec<(&'n Node, Vec<u8>)>,
    findings: &mut Findings,
) {
    match &node.kind {
        Kind::Bulk(r) | Kind::Verbatim(r) => {
            let Some(value) = raw.get(r.clone()) else {
                return;
            };
            let path = match place {
                Place::Field(k, f) => Some(format!("{k}.{f}")),
                _ => None,
            };
            let ctx = match place {
                Place::Text => FieldContext::text(),
                Place::Key(k) => FieldContext::column(k, Some(k)),
                Place::Field(_, f) => FieldContext::column(f, path.as_deref()),
            };
            let masked = engine.mask_bytes(value, &ctx, sel);
            findings.extend(masked.findings.iter().map(|f| (f.entity.clone(), f.count)));
            if let std::borrow::Cow::Owned(v) = masked.value {
                edits.push((node, v));
            }
        }
        Kind::Attribute(_, inner) => mask_tree(engine, raw, inner, place, sel, edits, findings),
        Kind::Map(items) => {
            for pair in items.chunks(2) {
                if let [_, v] = pair {
                    mask_tree(engine, raw, v, place, sel, edits, findings);
                }
            }
        }
        Kind::Array(items) | Kind::Set(items) | Kind::Push(items) => {
            for item in items {
                mask_tree(engine, raw, item, place, sel, edits, findings);
            }
        }
        _ => {}
    }
}

/// A reply value as one line of text for the recording.
fn render(raw: &[u8], node: &Node) -> Option<String> {
    let cut = |b: &[u8]| String::from_utf8_lossy(&b[..b.len().min(RECORD_VALUE)]).into_owned();
    match &node.kind {
        Kind::Simple(r)
        | Kind::Bulk(r)
        | Kind::Verbatim(r)
        | Kind::Number(r)
        | Kind::Error(r)
        | Kind::BulkError(r) => raw.get(r.clone()).map(cut),
        Kind::Integer(i) => Some(i.to_string()),
        Kind::Bool(b) => Some(b.to_string()),
        Kind::Null => None,
        Kind::Attribute(_, inner) => render(raw, inner),
        Kind::Array(items) | Kind::Set(items) | Kind::Push(items) | Kind::Map(items) => {
            let parts: Vec<String> = items
                .iter()
                .map(|i| render(raw, i).unwrap_or_else(|| "(nil)".into()))
                .collect();
            let mut s = format!("[{}]", parts.join(", "));
            s.truncate(RECORD_VALUE);
            Some(s)
        }
    }
}

/// Records a reply as forwarded: an error, or rows (one per element of
/// an aggregate, field and value for a map).
async fn record(r: &mut ResultRecorder, frame: &Frame) {
    let node = match &frame.node.kind {
        Kind::Attribute(_, inner) => inner,
        _ => &frame.node,
    };
    match &node.kind {
        Kind::Error(m) | Kind::BulkError(m) => {
            let message = String::from_utf8_lossy(frame.raw.get(m.clone()).unwrap_or_default());
            let code = message.split(' ').next().unwrap_or_default().to_owned();
            r.error(code, message.into_owned()).await;
            return;
        }
        Kind::Map(items) => {
            for pair in items.chunks(2) {
                let row = pair.iter().map(|n| render(&frame.raw, n)).collect();
                r.row(r.wants_row().then_some(row)).await;
            }
        }
        Kind::Array(items) | Kind::Set(items) | Kind::Push(items) => {
            for item in items {
                let row = vec![render(&frame.raw, item)];
                r.row(r.wants_row().then_some(row)).await;
            }
        }
        _ => {
            let row = vec![render(&frame.raw, node)];
            r.row(r.wants_row().then_some(row)).await;
        }
    }
    r.complete("reply".into()).await;
}
