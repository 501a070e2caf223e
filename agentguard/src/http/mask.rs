//! Response masking: a JSON body value by value (the key path feeds
//! `field:` rules and context scoring), text by the content detectors,
//! Server-Sent Events one event at a time (framing untouched; a value split
//! across network chunks is whole once its event is), except the delta text
//! of LLM streams, which is joined across events (`mask/sse.rs`). gzip and
//! deflate bodies are decoded first; the agent gets them identity-encoded
//! with chunked framing (the length changed). The proxy only asks upstream
//! for gzip or identity, so br/zstd arrive only from servers that ignore
//! Accept-Encoding — those maskable bodies are refused, not passed blind.

use std::{
    collections::BTreeMap,
    io::Write as _,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use agentguard_mask::{Engine, FieldContext, Finding, Selection};
use bytes::Bytes;
use http::{HeaderMap, header};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::BoxError;
use crate::audit::ResultRecorder;

mod sse;

/// JSON bodies up to this size are masked as a tree; larger ones as text.
const MAX_JSON_TREE: usize = 16 << 20;
/// An SSE event longer than this is masked and flushed in parts.
const MAX_EVENT: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Json,
    EventStream,
    /// One JSON document per line: NDJSON, and Kubernetes watch streams
    /// (each line masked as a tree, and sent as soon as it is complete).
    Lines,
    Text,
    /// Images, archives, octet streams: passed as they are.
    Opaque,
}

pub fn classify(headers: &HeaderMap) -> Class {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let streamed = ct.to_ascii_lowercase().contains("stream=watch");
    if matches!(mime.as_str(), "application/x-ndjson" | "application/jsonl") || streamed {
        Class::Lines
    } else if super::input::is_json(Some(&mime)) {
        Class::Json
    } else if mime == "text/event-stream" {
        Class::EventStream
    } else if mime.starts_with("text/")
        || mime.ends_with("+xml")
        || matches!(
            mime.as_str(),
            "application/xml"
                | "application/javascript"
                | "application/x-www-form-urlencoded"
                | "application/yaml"
                | "application/graphql-response+json"
        )
        // No content type at all: could be anything; look at it.
        || mime.is_empty()
    {
        Class::Text
    } else {
        Class::Opaque
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Deflate,
}

/// `Err(name)`: an encoding this proxy cannot decode.
pub fn encoding(headers: &HeaderMap) -> Result<Encoding, String> {
    let Some(v) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(Encoding::Identity);
    };
    let v = String::from_utf8_lossy(v.as_bytes())
        .trim()
        .to_ascii_lowercase();
    match v.as_str() {
        "" | "identity" => Ok(Encoding::Identity),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        "deflate" => Ok(Encoding::Deflate),
        _ => Err(v),
    }
}

enum Decoder {
    Identity,
    Gzip(flate2::write::GzDecoder<Vec<u8>>),
    Deflate(flate2::write::ZlibDecoder<Vec<u8>>),
}

impl Decoder {
    fn new(e: Encoding) -> Self {
        match e {
            Encoding::Identity => Decoder::Identity,
            Encoding::Gzip => Decoder::Gzip(flate2::write::GzDecoder::new(Vec::new())),
            Encoding::Deflate => Decoder::Deflate(flate2::write::ZlibDecoder::new(Vec::new())),
        }
    }

    fn push(&mut self, chunk: Bytes) -> std::io::Result<Bytes> {
        match self {
            Decoder::Identity => Ok(chunk),
            Decoder::Gzip(d) => {
                d.write_all(&chunk)?;
                Ok(Bytes::from(std::mem::take(d.get_mut())))
            }
            Decoder::Deflate(d) => {
                d.write_all(&chunk)?;
                Ok(Bytes::from(std::mem::take(d.get_mut())))
            }
        }
    }

    fn finish(&mut self) -> std::io::Result<Bytes> {
        match self {
            Decoder::Identity => Ok(Bytes::new()),
            Decoder::Gzip(d) => {
                d.try_finish()?;
                Ok(Bytes::from(std::mem::take(d.get_mut())))
            }
            Decoder::Deflate(d) => {
                d.try_finish()?;
                Ok(Bytes::from(std::mem::take(d.get_mut())))
            }
        }
    }
}

/// Masks the strings (and long integers) of a JSON tree in place; true if
/// anything changed.
pub fn mask_json(
    engine: &Engine,
    sel: &Selection,
    v: &mut Value,
    key: Option<&str>,
    path: &mut String,
    findings: &mut Vec<Finding>,
) -> bool {
    match v {
        Value::String(s) => {
            let m = engine.mask_value(s, &FieldContext::field(key.unwrap_or(""), Some(path)), sel);
            if m.changed() {
                let new = m.value.into_owned();
                findings.extend(m.findings);
                *s = new;
                return true;
            }
            findings.extend(m.findings);
            false
        }
        Value::Number(n) if n.is_u64() || n.is_i64() => {
            let s = n.to_string();
            let m = engine.mask_value(&s, &FieldContext::field(key.unwrap_or(""), Some(path)), sel);
            if m.changed() {
                findings.extend(m.findings);
                *v = if m.null {
                    Value::Null
                } else {
                    Value::String(m.value.into_owned())
                };
                return true;
            }
            false
        }
        Value::Array(items) => {
            let mut changed = false;
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                changed |= mask_json(engine, sel, item, key, path, findings);
                path.truncate(len);
            }
            changed
        }
        Value::Object(map) => {
            let mut changed = false;
            for (k, item) in map.iter_mut() {
                let len = path.len();
                path.push('.');
                path.push_str(k);
                changed |= mask_json(engine, sel, item, Some(k), path, findings);
                path.truncate(len);
            }
            changed
        }
        _ => false,
    }
}

/// Where an SSE event ends in `buf`: the index just past its blank line.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let at = i + p + 1;
        match buf.get(at) {
            Some(b'\n') => return Some(at + 1),
            Some(b'\r') if buf.get(at + 1) == Some(&b'\n') => return Some(at + 2),
            _ => i = at,
        }
    }
    None
}

/// Where a line ends: just past its `\n`.
fn line_end(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n').map(|p| p + 1)
}

/// The body the agent receives: frames from the masking task.
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx)
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

type Tx = mpsc::Sender<Result<Frame<Bytes>, BoxError>>;

/// Masks `body` on a task of its own; returns what the agent reads. What
/// was masked goes to `recorder` (the request's audit record) at the end.
pub fn masked_body(
    engine: Arc<Engine>,
    sel: Arc<Selection>,
    class: Class,
    encoding: Encoding,
    body: Incoming,
    mut recorder: ResultRecorder,
) -> ChannelBody {
    let (tx, rx) = mpsc::channel(16);
    let span = tracing::Span::current();
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let mut task = Task {
                engine: &engine,
                sel: &sel,
                tx,
                findings: BTreeMap::new(),
            };
            let result = task.run(class, Decoder::new(encoding), body).await;
            if let Err(e) = result {
                debug!("response body: {e}");
                let _ = task.tx.send(Err(e)).await;
            }
            if !task.findings.is_empty() {
                let summary: Vec<String> = task
                    .findings
                    .iter()
                    .map(|(k, n)| format!("{k}:{n}"))
                    .collect();
                info!(masked = %summary.join(","), "response masked");
            }
            recorder.masked(task.findings.iter().map(|(k, n)| (&**k, u64::from(*n))));
            recorder.finish().await;
        },
        span,
    ));
    ChannelBody { rx }
}

/// The next decoded chunk (`None` at the end); trailers are kept aside.
async fn next_chunk(
    body: &mut Incoming,
    dec: &mut Decoder,
    trailers: &mut Option<HeaderMap>,
) -> Result<Option<Bytes>, BoxError> {
    loop {
        let Some(frame) = body.frame().await else {
            let rest = dec.finish()?;
            return Ok((!rest.is_empty()).then_some(rest));
        };
        match frame?.into_data() {
            Ok(data) => {
                let out = dec.push(data)?;
                if !out.is_empty() {
                    return Ok(Some(out));
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    *trailers = Some(t);
                }
            }
        }
    }
}

struct Task<'e> {
    engine: &'e Engine,
    sel: &'e Selection,
    tx: Tx,
    findings: BTreeMap<String, u32>,
}

/// The agent hung up: stop quietly.
#[derive(Debug, thiserror::Error)]
#[error("agent closed the response")]
struct Gone;

fn note(findings: &mut BTreeMap<String, u32>, fs: &[Finding]) {
    for f in fs {
        *findings.entry(f.entity.to_string()).or_default() += f.count;
    }
}

/// Splits a streamed body into SSE events (or lines, for [`Class::Lines`])
/// and masks each one whole (SSE delta text: joined per stream, see
/// `mask/sse.rs`), whatever the network chunking was: the output of the `push`es
/// and `finish` does not depend on where chunks were cut.
pub struct EventMasker<'e> {
    engine: &'e Engine,
    sel: &'e Selection,
    class: Class,
    buf: Vec<u8>,
    deltas: sse::Deltas<'e>,
    /// Entity name → how many were masked.
    pub findings: BTreeMap<String, u32>,
}

impl<'e> EventMasker<'e> {
    pub fn new(engine: &'e Engine, sel: &'e Selection, class: Class) -> Self {
        Self {
            engine,
            sel,
            class,
            buf: Vec::new(),
            deltas: sse::Deltas::new(engine, sel),
            findings: BTreeMap::new(),
        }
    }

    /// The masked events (lines) this chunk completes.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let split = if self.class == Class::Lines {
            line_end
        } else {
            event_end
        };
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(end) = split(&self.buf[start..]) {
            let unit = self.buf[start..start + end].to_vec();
            self.mask_unit(self.class, &unit, &mut out);
            start += end;
        }
        self.buf.drain(..start);
        if self.buf.len() > MAX_EVENT {
            let unit = std::mem::take(&mut self.buf);
            if self.class == Class::EventStream {
                let mut part = Vec::new();
                self.mask_unit(Class::Text, &unit, &mut part);
                self.deltas.raw(part);
            } else {
                self.mask_unit(Class::Text, &unit, &mut out);
            }
        }
        self.deltas.drain(&mut out);
        out
    }

    /// The body ended: the last, unterminated event (line), and the text
    /// streams' held tails.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let unit = std::mem::take(&mut self.buf);
        self.mask_unit(self.class, &unit, &mut out);
        self.deltas.close_all(&mut self.findings);
        self.deltas.drain(&mut out);
        out
    }

    /// Masks one SSE event (queued behind the events still waiting for
    /// their delta text) or one line (as a document: `mask_document`).
    fn mask_unit(&mut self, class: Class, unit: &[u8], out: &mut Vec<u8>) {
        if class == Class::EventStream {
            self.deltas.event(unit, &mut self.findings);
            return;
        }
        if class == Class::Lines {
            let body = unit.trim_ascii_end();
            match mask_document(self.engine, self.sel, body, &mut self.findings) {
                Some(masked) => {
                    out.extend_from_slice(&masked);
                    out.extend_from_slice(&unit[body.len()..]);
                }
                None => out.extend_from_slice(unit),
            }
            return;
        }
        let m = self
            .engine
            .mask_bytes(unit, &FieldContext::text(), self.sel);
        note(&mut self.findings, &m.findings);
        out.extend_from_slice(&m.value);
    }
}

/// One self-contained document (a line, a WebSocket message): JSON masked
/// as a tree (so `field:` rules apply), anything else by the text
/// detectors. `None`: nothing was masked.
pub fn mask_document(
    engine: &Engine,
    sel: &Selection,
    doc: &[u8],
    findings: &mut BTreeMap<String, u32>,
) -> Option<Vec<u8>> {
    if let Ok(mut v) = serde_json::from_slice::<Value>(doc) {
        let mut fs = Vec::new();
        if !mask_json(engine, sel, &mut v, None, &mut String::from("$"), &mut fs) {
            return None;
        }
        if let Ok(b) = serde_json::to_vec(&v) {
            note(findings, &fs);
            return Some(b);
        }
    }
    let m = engine.mask_bytes(doc, &FieldContext::text(), sel);
    note(findings, &m.findings);
    match m.value {
        std::borrow::Cow::Owned(v) => Some(v),
        std::borrow::Cow::Borrowed(_) => None,
    }
}

impl Task<'_> {
    fn note(&mut self, fs: &[Finding]) {
        note(&mut self.findings, fs);
    }

    async fn send(&self, data: Vec<u8>) -> Result<(), BoxError> {
        if data.is_empty() {
            return Ok(());
        }
        self.tx
            .send(Ok(Frame::data(Bytes::from(data))))
            .await
            .map_err(|_| Box::new(Gone) as BoxError)
    }

    async fn run(
        &mut self,
        class: Class,
        mut dec: Decoder,
        mut body: Incoming,
    ) -> Result<(), BoxError> {
        let mut trailers = None;
        let next = next_chunk;
        match class {
            Class::Json => {
                let mut buf = Vec::new();
                let mut done = false;
                while buf.len() <= MAX_JSON_TREE {
                    match next(&mut body, &mut dec, &mut trailers).await? {
                        Some(c) => buf.extend_from_slice(&c),
                        None => {
                            done = true;
                            break;
                        }
                    }
                }
                let tree = if done {
                    serde_json::from_slice::<Value>(&buf).ok()
                } else {
                    None
                };
                if let Some(mut v) = tree {
                    let mut fs = Vec::new();
                    let changed = mask_json(
                        self.engine,
                        self.sel,
                        &mut v,
                        None,
                        &mut String::from("$"),
                        &mut fs,
                    );
                    self.note(&fs);
                    let out = if changed {
                        serde_json::to_vec(&v)?
                    } else {
                        buf
                    };
                    self.send(out).await?;
                } else {
                    // Not JSON after all, or too big for a tree: as text.
                    let mut m = self.engine.stream(&FieldContext::text(), self.sel);
                    let out = m.push(&buf);
                    self.send(out).await?;
                    if !done {
                        while let Some(c) = next(&mut body, &mut dec, &mut trailers).await? {
                            let out = m.push(&c);
                            self.send(out).await?;
                        }
                    }
                    let out = m.finish();
                    let fs = m.findings().to_vec();
                    self.note(&fs);
                    self.send(out).await?;
                }
            }
            Class::EventStream | Class::Lines => {
                let mut units = EventMasker::new(self.engine, self.sel, class);
                let mut result = Ok(());
                while let Some(c) = next(&mut body, &mut dec, &mut trailers).await? {
                    // Each event (line) leaves as soon as it is complete:
                    // streaming latency is one event, not one body.
                    result = self.send(units.push(&c)).await;
                    if result.is_err() {
                        break;
                    }
                }
                if result.is_ok() {
                    result = self.send(units.finish()).await;
                }
                for (k, n) in units.findings {
                    *self.findings.entry(k).or_default() += n;
                }
                result?;
            }
            Class::Text | Class::Opaque => {
                let mut m = self.engine.stream(&FieldContext::text(), self.sel);
                while let Some(c) = next(&mut body, &mut dec, &mut trailers).await? {
                    let out = m.push(&c);
                    self.send(out).await?;
                }
                let out = m.finish();
                let fs = m.findings().to_vec();
                self.note(&fs);
                self.send(out).await?;
            }
        }
        if let Some(t) = trailers {
            let _ = self.tx.send(Ok(Frame::trailers(t))).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentguard_mask::MaskConfig;

    #[test]
    fn sse_event_boundaries() {
        assert_eq!(event_end(b"data: a\n"), None);
        assert_eq!(event_end(b"data: a\n\ndata: b"), Some(9));
        assert_eq!(event_end(b"data: a\r\n\r\nx"), Some(11));
        assert_eq!(event_end(b"\n\n"), Some(2));
    }

    #[test]
    fn classes_and_encodings() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().expect("v"),
        );
        assert_eq!(classify(&h), Class::Json);
        h.insert(
            header::CONTENT_TYPE,
            "text/event-stream".parse().expect("v"),
        );
        assert_eq!(classify(&h), Class::EventStream);
        h.insert(
            header::CONTENT_TYPE,
            "application/json;stream=watch".parse().expect("v"),
        );
        assert_eq!(classify(&h), Class::Lines);
        h.insert(
            header::CONTENT_TYPE,
            "application/x-ndjson".parse().expect("v"),
        );
        assert_eq!(classify(&h), Class::Lines);
        h.insert(header::CONTENT_TYPE, "image/png".parse().expect("v"));
        assert_eq!(classify(&h), Class::Opaque);
        h.insert(header::CONTENT_ENCODING, "br".parse().expect("v"));
        assert_eq!(encoding(&h), Err("br".to_owned()));
        h.insert(header::CONTENT_ENCODING, "gzip".parse().expect("v"));
        assert_eq!(encoding(&h), Ok(Encoding::Gzip));
    }

    #[test]
    fn json_by_key_path_and_detectors() {
        let e = Engine::new(&MaskConfig::default()).expect("engine");
        let sel = e
            .selection(None, &["email", "card", "field:$.user.note"])
            .expect("sel");
        let mut v: Value = serde_json::json!({
            "user": {"email": "john.doe@example.com", "note": "anything", "id": 7},
            "cards": ["4111 1111 1111 1111"],
            "pan": 4111111111111111u64,
        });
        let mut fs = Vec::new();
        assert!(mask_json(
            &e,
            &sel,
            &mut v,
            None,
            &mut String::from("$"),
            &mut fs
        ));
        let s = v.to_string();
        assert!(!s.contains("john.doe@example.com"), "{s}");
        assert!(!s.contains("4111 1111 1111 1111"), "{s}");
        assert!(!s.contains("4111111111111111"), "{s}");
        assert_ne!(v["user"]["note"], "anything");
        assert_eq!(v["user"]["id"], 7);
    }

    #[test]
    fn lines_masked_as_json_trees_or_text() {
        let e = Engine::new(&MaskConfig::default()).expect("engine");
        let sel = e.selection(None, &["email"]).expect("sel");
        let mut task = EventMasker::new(&e, &sel, Class::Lines);
        let mut out = Vec::new();
        task.mask_unit(Class::Lines, b"{\"a\": \"x@example.com\"}\n", &mut out);
        task.mask_unit(Class::Lines, b"{\"a\": 1}\n", &mut out);
        task.mask_unit(Class::Lines, b"not json y@example.com\n", &mut out);
        let s = String::from_utf8(out).expect("utf8");
        assert_eq!(s.lines().count(), 3, "{s}");
        assert!(!s.contains("@example.com"), "{s}");
        assert!(
            s.contains("{\"a\": 1}\n"),
            "untouched lines keep their bytes: {s}"
        );
        assert_eq!(task.findings.get("email"), Some(&2));
    }

    #[test]
    fn gzip_decodes_in_pieces() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(b"card 4111 1111 1111 1111").expect("gz");
        let gz = enc.finish().expect("gz");
        let mut d = Decoder::new(Encoding::Gzip);
        let mut out = Vec::new();
        for c in gz.chunks(5) {
            out.extend_from_slice(&d.push(Bytes::copy_from_slice(c)).expect("push"));
        }
        out.extend_from_slice(&d.finish().expect("finish"));
        assert_eq!(out, b"card 4111 1111 1111 1111");
    }
}

#[cfg(test)]
mod sse_tests {
    //! LLM delta text joined across events: each shape, each entity, split
    //! over 2–5 events and cut by the network at every byte.
    use super::*;
    use agentguard_mask::MaskConfig;

    const EMAIL: &str = "john.doe@example.com";
    const CARD: &str = "4111 1111 1111 1111";
    const KEY: &str = "sk-proj-Ab3dEf9hIjKlMn0pQrStUvWx12";

    #[derive(Clone, Copy, Debug)]
    enum Api {
        Chat,
        Anthropic,
        Responses,
    }

    const APIS: [Api; 3] = [Api::Chat, Api::Anthropic, Api::Responses];

    fn quoted(s: &str) -> String {
        serde_json::to_string(s).expect("json")
    }

    /// A stream as each API sends it: the tokens as deltas of index 0.
    fn stream(api: Api, tokens: &[&str]) -> String {
        let mut s = String::new();
        match api {
            Api::Chat => {
                for t in tokens {
                    s += &format!(
                        "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}},\"finish_reason\":null}}]}}\n\n",
                        quoted(t)
                    );
                }
                s += "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
            }
            Api::Anthropic => {
                s += "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m1\",\"content\":[]}}\n\n";
                s += "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n";
                for t in tokens {
                    s += &format!(
                        "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":{}}}}}\n\n",
                        quoted(t)
                    );
                }
                s += "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n";
                s += "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
            }
            Api::Responses => {
                for (n, t) in tokens.iter().enumerate() {
                    s += &format!(
                        "event: response.output_text.delta\nid: {n}\ndata: {{\"type\":\"response.output_text.delta\",\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":{},\"sequence_number\":{n}}}\n\n",
                        quoted(t)
                    );
                }
                s += "event: response.output_text.done\ndata: {\"type\":\"response.output_text.done\",\"output_index\":0,\"content_index\":0}\n\n";
                s += "event: response.completed\ndata: {\"type\":\"response.completed\"}\n\n";
            }
        }
        s
    }

    /// The delta text of each event, as a client joins it (`None`: an event
    /// without delta text).
    fn deltas(api: Api, body: &str) -> Vec<Option<String>> {
        events(body)
            .iter()
            .map(|ev| {
                let data = ev.lines().find_map(|l| l.strip_prefix("data: "))?;
                let v: Value = serde_json::from_str(data).ok()?;
                let t = match api {
                    Api::Chat => &v["choices"][0]["delta"]["content"],
                    Api::Anthropic => &v["delta"]["text"],
                    Api::Responses => &v["delta"],
                };
                t.as_str().map(str::to_owned)
            })
            .collect()
    }

    fn events(body: &str) -> Vec<&str> {
        body.split_inclusive("\n\n").collect()
    }

    /// Every line of each event but its data: the framing.
    fn framing(body: &str) -> Vec<Vec<&str>> {
        events(body)
            .iter()
            .map(|e| e.lines().filter(|l| !l.starts_with("data:")).collect())
            .collect()
    }

    fn run(
        e: &Engine,
        sel: &Selection,
        chunks: &mut dyn Iterator<Item = &[u8]>,
    ) -> (String, BTreeMap<String, u32>) {
        let mut m = EventMasker::new(e, sel, Class::EventStream);
        let mut out = Vec::new();
        for c in chunks {
            out.extend(m.push(c));
        }
        out.extend(m.finish());
        (String::from_utf8(out).expect("utf8"), m.findings)
    }

    /// The whole body at once, and the same output for every cut.
    fn masked(e: &Engine, sel: &Selection, body: &str) -> (String, BTreeMap<String, u32>) {
        let b = body.as_bytes();
        let whole = run(e, sel, &mut std::iter::once(b));
        for at in 0..=b.len() {
            let (out, _) = run(e, sel, &mut [&b[..at], &b[at..]].into_iter());
            assert_eq!(out, whole.0, "cut at {at} changed the output");
        }
        let (out, _) = run(e, sel, &mut b.chunks(1));
        assert_eq!(out, whole.0, "byte-by-byte changed the output");
        whole
    }

    /// `text` cut into `n` tokens at spread-out places.
    fn tokens(text: &str, n: usize) -> Vec<&str> {
        let mut cuts: Vec<usize> = (1..n).map(|i| i * text.len() / n).collect();
        cuts.insert(0, 0);
        cuts.push(text.len());
        cuts.windows(2).map(|w| &text[w[0]..w[1]]).collect()
    }

    #[test]
    fn entity_split_across_events_is_masked() {
        let e = Engine::new(&MaskConfig::default()).expect("engine");
        let sel = e.default_selection().clone();
        for (secret, entity) in [(EMAIL, "email"), (CARD, "card"), (KEY, "openai_key")] {
            let text = format!("Reach {secret} today.");
            let want = e.mask_value(&text, &FieldContext::text(), &sel).value;
            assert_ne!(want, text);
            for api in APIS {
                for n in 2..=5 {
                    // The entity itself is cut into n tokens.
                    let mut toks = vec!["Reach "];
                    toks.extend(tokens(secret, n));
                    toks.push(" today.");
                    let body = stream(api, &toks);
                    let (out, findings) = masked(&e, &sel, &body);
                    let got: String = deltas(api, &out).into_iter().flatten().collect();
                    assert_eq!(got, want, "{api:?} n={n}\n{out}");
                    assert!(!out.contains(&secret[..secret.len() - 2]), "{out}");
                    assert_eq!(findings.get(entity), Some(&1), "{api:?} {findings:?}");
                    assert_eq!(framing(&out), framing(&body), "{api:?} framing");
                    if n == 3 {
                        let crlf = body.replace('\n', "\r\n");
                        assert_eq!(masked(&e, &sel, &crlf).0, out.replace('\n', "\r\n"));
                    }
                    assert_eq!(
                        deltas(api, &out)
                            .iter()
                            .map(Option::is_some)
                            .collect::<Vec<_>>(),
                        deltas(api, &body)
                            .iter()
                            .map(Option::is_some)
                            .collect::<Vec<_>>(),
                        "every event kept"
                    );
                }
            }
        }
    }

    #[test]
    fn joined_deltas_are_the_text_masked_whole() {
        let e = Engine::new(&MaskConfig::default()).expect("engine");
        let sel = e.default_selection().clone();
        // Replacements of other lengths (redact) next to multi-byte text.
        let text = format!(
            "é {KEY}ü mail {EMAIL}, 电话 +1 415 555 2671; card {CARD}, key {KEY} — and {EMAIL}"
        );
        let want = e.mask_value(&text, &FieldContext::text(), &sel).value;
        let chars: Vec<char> = text.chars().collect();
        for size in 1..=9 {
            let toks: Vec<String> = chars.chunks(size).map(String::from_iter).collect();
            let toks: Vec<&str> = toks.iter().map(String::as_str).collect();
            for api in APIS {
                let body = stream(api, &toks);
                let b = body.as_bytes();
                let (out, _) = run(&e, &sel, &mut std::iter::once(b));
                let (cut, _) = run(&e, &sel, &mut b.chunks(size * 7));
                assert_eq!(out, cut);
                let got: String = deltas(api, &out).into_iter().flatten().collect();
                assert_eq!(got, want, "{api:?} size {size}");
            }
        }
    }

    #[test]
    fn stream_without_pii_is_byte_identical() {
        let e = Engine::new(&MaskConfig::default()).expect("engine");
        let sel = e.default_selection().clone();
        // Escapes and non-ASCII text as servers write them: kept as written.
        let toks = [
            "Hello",
            ", wor",
            "ld \u{e9}t\u{e9}",
            "\n\n- item",
            " 42",
            "",
            " done.",
        ];
        for api in APIS {
            let body = stream(api, &toks).replace("\\n", "\\u000a");
            let (out, findings) = masked(&e, &sel, &body);
            assert_eq!(out, body, "{api:?}");
            assert!(findings.is_empty());
        }
        let crlf = stream(Api::Chat, &toks).replace('\n', "\r\n");
        assert_eq!(masked(&e, &sel, &crlf).0, crlf);
    }

    #[test]
    fn done_stays_last_and_a_held_tail_is_flushed() {
        let e = Engine::new(&MaskConfig::default()).expect("engine");
        let sel = e.default_selection().clone();
        let body = stream(Api::Chat, &["mail ", "jane@exam", "ple.org"]);
        let (out, _) = masked(&e, &sel, &body);
        assert!(out.ends_with("data: [DONE]\n\n"), "{out}");
        assert_eq!(out.matches("[DONE]").count(), 1);
        assert!(!out.contains("jane@"), "{out}");

        // No end event at all: the body's end releases the held text into
        // the last delta event, which has no blank line either.
        let body = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"mail jane@exam\"}}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ple.org ok\"}}]}";
        let (out, findings) = masked(&e, &sel, body);
        assert_eq!(events(&out).len(), 2, "{out}");
        let got: String = deltas(Api::Chat, &out).into_iter().flatten().collect();
        assert_eq!(got, "mail j***@*******.org ok", "{out}");
        assert_eq!(findings.get("email"), Some(&1));
    }

    #[test]
    fn choices_and_blocks_are_separate_streams() {
        let e = Engine::new(&MaskConfig::default()).expect("engine");
        let sel = e.default_selection().clone();
        // Two choices interleaved: each joins its own text only.
        let ev = |i: u32, t: &str| {
            format!(
                "data: {{\"choices\":[{{\"index\":{i},\"delta\":{{\"content\":{}}}}}]}}\n\n",
                quoted(t)
            )
        };
        let body = [
            ev(0, "a john.doe@"),
            ev(1, "b 4111 1111 "),
            ev(0, "example.com"),
            ev(1, "1111 1111"),
            "data: [DONE]\n\n".to_owned(),
        ]
        .concat();
        let (out, findings) = masked(&e, &sel, &body);
        assert!(
            !out.contains("john.doe") && !out.contains("4111 1111 1111"),
            "{out}"
        );
        assert_eq!(findings.get("email"), Some(&1), "{out}");
        assert_eq!(findings.get("card"), Some(&1), "{out}");
        assert_eq!(events(&out).len(), 5);
    }

    #[test]
    fn other_fields_of_delta_events_are_masked_too() {
        let e = Engine::new(&MaskConfig::default()).expect("engine");
        let sel = e.default_selection().clone();
        let body = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"output_index\":0,\"content_index\":0,\"delta\":\"to jo\",\"note\":\"x@example.net\"}\n\n\
            event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"output_index\":0,\"content_index\":0,\"delta\":\"e@example.com\"}\n\n\
            event: response.output_text.done\ndata: {\"type\":\"response.output_text.done\",\"output_index\":0,\"content_index\":0,\"text\":\"to joe@example.com\"}\n\n";
        let (out, findings) = masked(&e, &sel, body);
        assert!(!out.contains("@example."), "{out}");
        assert_eq!(findings.get("email"), Some(&3), "{out}");
        let got: String = deltas(Api::Responses, &out).into_iter().flatten().collect();
        assert_eq!(got, "to j**@*******.com", "{out}");
    }
}
