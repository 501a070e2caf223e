//! One HTTP request as policy sees it (`input.request`): kind `http`,
//! `k8s` or `llm`; and one message the agent sends over a WebSocket, kind
//! `websocket`. Credentials in headers are redacted before policy or a
//! log sees them; a JSON body up to [`MAX_JSON_BODY`] is parsed; content
//! detectors list the entities the body carries (type, count, where —
//! never the value).

use std::collections::BTreeMap;

use agentguard_mask::{Engine, FieldContext, Selection};
use http::HeaderMap;
use serde::Serialize;
use serde_json::Value;

use super::k8s;
use crate::config::Protocol;
use crate::decide::Request;

/// Larger JSON bodies are forwarded but not parsed for policy.
pub const MAX_JSON_BODY: usize = 1 << 20;
/// Prompt text handed to policy is cut here (entities cover the whole body).
const MAX_PROMPT: usize = 64 * 1024;

/// Where a request goes; a WebSocket's messages carry their upgrade's.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    pub method: String,
    /// "http" or "https" (as the agent sees it).
    pub scheme: &'static str,
    pub host: String,
    /// The TLS server name the agent asked for (intercepted HTTPS only);
    /// `host` is what the server routes on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    pub path: String,
    pub query: String,
}

/// `input.request` for kind `http`.
#[derive(Debug, Clone, Serialize)]
pub struct HttpRequest {
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// Lower-case names; repeated headers joined with ", "; credentials
    /// redacted.
    pub headers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// The body was JSON but over the size limit: not parsed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub body_truncated: bool,
    pub entities: Vec<Entity>,
    /// `websocket` and the like for an Upgrade request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<String>,
    /// The guard sets the target's stored credential (the agent's own, if
    /// it sent one, was removed: `agent_sent`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<crate::credentials::CredentialUse>,
}

/// `input.request` for kind `llm`: the http fields plus what the prompt is.
#[derive(Debug, Clone, Serialize)]
pub struct LlmRequest {
    /// openai, anthropic, or unknown.
    pub provider: &'static str,
    pub model: Option<String>,
    pub prompt: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub prompt_truncated: bool,
    pub stream: bool,
    #[serde(flatten)]
    pub http: HttpRequest,
}

/// `input.request` for kind `websocket`: one message from the agent. The
/// server's messages are masked, not decided.
#[derive(Debug, Clone, Serialize)]
pub struct WebSocketMessage {
    /// The upgrade request's.
    #[serde(flatten)]
    pub upgrade: Endpoint,
    /// `agent_to_server`.
    pub direction: &'static str,
    /// `text` or `binary`.
    pub message: &'static str,
    /// The whole message, in bytes.
    pub size: usize,
    /// A text message up to [`MAX_JSON_BODY`] (cut on a char boundary).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub text_truncated: bool,
    /// A text message that parses as JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// Over the whole message, text or binary.
    pub entities: Vec<Entity>,
}

/// `input.request` for a passed-through TLS connection (kind `connect`).
#[derive(Debug, Clone, Serialize)]
pub struct TlsConnect {
    pub sni: Option<String>,
    pub alpn: Vec<String>,
    pub tls: &'static str,
}

/// What a detector found: never the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entity {
    #[serde(rename = "type")]
    pub kind: String,
    pub count: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Header names whose values are credentials.
fn is_credential(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        "x-amz-security-token",
    ];
    EXACT.contains(&name)
        || [
            "token", "secret", "password", "api-key", "apikey", "session",
        ]
        .iter()
        .any(|w| name.contains(w))
}

pub fn redacted_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let name = name.as_str();
        let v = if is_credential(name) {
            // Keep the scheme ("Bearer", "Basic"): policies may want it.
            match value.to_str().ok().and_then(|v| v.split_once(' ')) {
                Some((scheme, _)) if name.ends_with("authorization") => {
                    format!("{scheme} [redacted]")
                }
                _ => "[redacted]".to_owned(),
            }
        } else {
            String::from_utf8_lossy(value.as_bytes()).into_owned()
        };
        out.entry(name.to_owned())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    out
}

pub fn is_json(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        let mime = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        mime == "application/json" || mime.ends_with("+json")
    })
}

/// The OpenAI- and Anthropic-style endpoints whose bodies are prompts.
pub fn llm_provider(path: &str) -> Option<&'static str> {
    match path.trim_end_matches('/') {
        "/v1/chat/completions" | "/v1/completions" | "/v1/responses" | "/v1/embeddings" => {
            Some("openai")
        }
        "/v1/messages" => Some("anthropic"),
        _ => None,
    }
}

/// Everything known about the request before it is decided.
pub struct Parts<'a> {
    pub method: &'a str,
    pub scheme: &'static str,
    pub host: &'a str,
    pub sni: Option<&'a str>,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The buffered body, JSON or text (`None`: not buffered, or too big).
    pub body: Option<&'a [u8]>,
    pub body_truncated: bool,
    pub upgrade: Option<String>,
    pub credential: Option<crate::credentials::CredentialUse>,
}

impl Parts<'_> {
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            method: self.method.to_owned(),
            scheme: self.scheme,
            host: self.host.to_owned(),
            sni: self.sni.map(str::to_owned),
            path: self.path.to_owned(),
            query: self.query.unwrap_or("").to_owned(),
        }
    }
}

/// Builds the request of the right kind for the target's protocol.
pub fn build(
    protocol: Protocol,
    parts: &Parts<'_>,
    engine: &Engine,
    detect: &Selection,
) -> Request {
    if protocol == Protocol::K8s {
        return Request::K8s(k8s::derive(parts.method, parts.path, parts.query));
    }
    let body: Option<Value> = parts.body.and_then(|b| serde_json::from_slice(b).ok());
    let entities = match (&body, parts.body) {
        (Some(tree), _) => entities(engine, detect, tree),
        // Text (a form, plain text): scanned as a whole.
        (None, Some(raw)) => text_entities(engine, detect, raw),
        (None, None) => Vec::new(),
    };
    let http = HttpRequest {
        endpoint: parts.endpoint(),
        headers: redacted_headers(parts.headers),
        body,
        body_truncated: parts.body_truncated,
        entities,
        upgrade: parts.upgrade.clone(),
        credential: parts.credential.clone(),
    };
    let provider = llm_provider(parts.path);
    if protocol != Protocol::Llm && provider.is_none() {
        return Request::Http(http);
    }
    let (prompt, prompt_truncated) = http.body.as_ref().map(prompt).unwrap_or_default();
    let field = |k: &str| http.body.as_ref().and_then(|b| b.get(k));
    Request::Llm(LlmRequest {
        provider: provider.unwrap_or("unknown"),
        model: field("model").and_then(Value::as_str).map(str::to_owned),
        stream: field("stream").and_then(Value::as_bool).unwrap_or(false),
        prompt,
        prompt_truncated,
        http,
    })
}

/// Every string in the body through the detectors; counts per (type, path).
pub fn entities(engine: &Engine, sel: &Selection, body: &Value) -> Vec<Entity> {
    let mut found: BTreeMap<(String, String), u32> = BTreeMap::new();
    let mut path = String::new();
    walk_strings(body, None, &mut path, &mut |key, path, s| {
        let m = engine.mask_value(s, &FieldContext::field(key.unwrap_or(""), Some(path)), sel);
        for f in m.findings {
            *found
                .entry((f.entity.to_string(), path.to_owned()))
                .or_default() += f.count;
        }
    });
    found
        .into_iter()
        .map(|((kind, path), count)| Entity {
            kind,
            count,
            path: (!path.is_empty()).then_some(path),
        })
        .collect()
}

/// The policy input for one message the agent sends.
pub fn websocket_message(
    upgrade: &Endpoint,
    data: &[u8],
    is_text: bool,
    engine: &Engine,
    detect: &Selection,
) -> Request {
    let body: Option<Value> = (is_text && data.len() <= MAX_JSON_BODY)
        .then(|| serde_json::from_slice(data).ok())
        .flatten();
    let entities = match &body {
        Some(tree) => entities(engine, detect, tree),
        None => text_entities(engine, detect, data),
    };
    // Text messages are valid UTF-8 (the WebSocket layer checks).
    let (text, text_truncated) = match std::str::from_utf8(data) {
        Ok(t) if is_text => {
            let cut = t.floor_char_boundary(MAX_JSON_BODY);
            (Some(t[..cut].to_owned()), cut < t.len())
        }
        _ => (None, false),
    };
    Request::WebSocket(WebSocketMessage {
        upgrade: upgrade.clone(),
        direction: "agent_to_server",
        message: if is_text { "text" } else { "binary" },
        size: data.len(),
        text,
        text_truncated,
        body,
        entities,
    })
}

fn text_entities(engine: &Engine, sel: &Selection, raw: &[u8]) -> Vec<Entity> {
    let m = engine.mask_bytes(raw, &FieldContext::text(), sel);
    let mut found: BTreeMap<String, u32> = BTreeMap::new();
    for f in m.findings {
        *found.entry(f.entity.to_string()).or_default() += f.count;
    }
    found
        .into_iter()
        .map(|(kind, count)| Entity {
            kind,
            count,
            path: None,
        })
        .collect()
}

/// Visits each string (and each long number, which may be a card or an
/// account) with its key and its path (`messages[1].content`).
fn walk_strings(
    v: &Value,
    key: Option<&str>,
    path: &mut String,
    f: &mut dyn FnMut(Option<&str>, &str, &str),
) {
    match v {
        Value::String(s) => f(key, path, s),
        Value::Number(n) if n.is_u64() || n.is_i64() => {
            let s = n.to_string();
            if s.len() >= 9 {
                f(key, path, &s);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk_strings(item, key, path, f);
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                walk_strings(item, Some(k), path, f);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// The prompt: text under the keys OpenAI and Anthropic bodies put it in,
/// in order, one piece per line.
fn prompt(body: &Value) -> (String, bool) {
    const PROMPT_KEYS: &[&str] = &[
        "system",
        "instructions",
        "messages",
        "prompt",
        "input",
        "contents",
    ];
    const SKIP: &[&str] = &[
        "role",
        "type",
        "id",
        "name",
        "tool_call_id",
        "model",
        "cache_control",
    ];
    let mut out = String::new();
    let mut truncated = false;
    for key in PROMPT_KEYS {
        let Some(v) = body.get(*key) else { continue };
        let mut path = String::new();
        walk_strings(v, Some(key), &mut path, &mut |k, _, s| {
            if k.is_some_and(|k| SKIP.contains(&k)) || truncated {
                return;
            }
            if out.len() + s.len() + 1 > MAX_PROMPT {
                truncated = true;
                return;
            }
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(s);
        });
    }
    (out, truncated)
}

/// Masks every string of an LLM request body with the decision's rules,
/// so PII does not leave the host; `None` when nothing changed.
pub fn mask_request_json(engine: &Engine, sel: &Selection, body: &[u8]) -> Option<(Vec<u8>, u32)> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let mut findings = Vec::new();
    let changed = super::mask::mask_json(
        engine,
        sel,
        &mut v,
        None,
        &mut String::from("$"),
        &mut findings,
    );
    if !changed {
        return None;
    }
    let count = findings.iter().map(|f| f.count).sum();
    serde_json::to_vec(&v).ok().map(|b| (b, count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentguard_mask::MaskConfig;

    fn engine() -> Engine {
        Engine::new(&MaskConfig::default()).expect("engine")
    }

    #[test]
    fn credentials_are_redacted() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer sk-abc".parse().expect("v"));
        h.insert("cookie", "session=1".parse().expect("v"));
        h.insert("x-api-key", "k".parse().expect("v"));
        h.insert("x-auth-token", "t".parse().expect("v"));
        h.insert("content-type", "application/json".parse().expect("v"));
        h.append("accept", "a".parse().expect("v"));
        h.append("accept", "b".parse().expect("v"));
        let r = redacted_headers(&h);
        assert_eq!(r["authorization"], "Bearer [redacted]");
        assert_eq!(r["cookie"], "[redacted]");
        assert_eq!(r["x-api-key"], "[redacted]");
        assert_eq!(r["x-auth-token"], "[redacted]");
        assert_eq!(r["content-type"], "application/json");
        assert_eq!(r["accept"], "a, b");
    }

    #[test]
    fn json_content_types() {
        assert!(is_json(Some("application/json")));
        assert!(is_json(Some("Application/JSON; charset=utf-8")));
        assert!(is_json(Some("application/merge-patch+json")));
        assert!(!is_json(Some("text/plain")));
        assert!(!is_json(None));
    }

    fn parts<'a>(path: &'a str, headers: &'a HeaderMap, body: Option<&'a [u8]>) -> Parts<'a> {
        Parts {
            method: "POST",
            scheme: "https",
            host: "api.openai.com",
            sni: None,
            path,
            query: None,
            headers,
            body,
            body_truncated: false,
            upgrade: None,
            credential: None,
        }
    }

    #[test]
    fn llm_prompt_model_and_entities() {
        let e = engine();
        let detect = e.selection(None, &["all"]).expect("sel");
        let h = HeaderMap::new();
        let body = br#"{"model":"gpt-4o","stream":true,"messages":[
            {"role":"system","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"mail bob@example.com key AKIAIOSFODNN7EXAMPLE"}]}]}"#;
        let Request::Llm(r) = build(
            Protocol::Http,
            &parts("/v1/chat/completions", &h, Some(body)),
            &e,
            &detect,
        ) else {
            panic!("llm kind");
        };
        assert_eq!(r.provider, "openai");
        assert_eq!(r.model.as_deref(), Some("gpt-4o"));
        assert!(r.stream);
        assert_eq!(
            r.prompt,
            "be brief\nmail bob@example.com key AKIAIOSFODNN7EXAMPLE"
        );
        let types: Vec<&str> = r.http.entities.iter().map(|e| e.kind.as_str()).collect();
        assert!(types.contains(&"email"), "{types:?}");
        assert!(types.contains(&"aws_access_key"), "{types:?}");
        let email = r
            .http
            .entities
            .iter()
            .find(|e| e.kind == "email")
            .expect("email");
        assert_eq!(email.path.as_deref(), Some("messages[1].content[0].text"));
        let json = serde_json::to_value(Request::Llm(r)).expect("json");
        assert_eq!(json["kind"], "llm");
        assert_eq!(json["method"], "POST");
        assert!(
            !json.to_string().contains("bob@example.com\"}]"),
            "entities carry no values"
        );
    }

    #[test]
    fn anthropic_and_plain_http() {
        let e = engine();
        let detect = e.selection(None, &["all"]).expect("sel");
        let h = HeaderMap::new();
        let body =
            br#"{"model":"claude","system":"sys","messages":[{"role":"user","content":"hi"}]}"#;
        let Request::Llm(r) = build(
            Protocol::Http,
            &parts("/v1/messages", &h, Some(body)),
            &e,
            &detect,
        ) else {
            panic!("llm kind");
        };
        assert_eq!((r.provider, r.prompt.as_str()), ("anthropic", "sys\nhi"));
        let Request::Http(r) = build(
            Protocol::Http,
            &parts("/v1/invoices", &h, Some(b"{\"a\":1}")),
            &e,
            &detect,
        ) else {
            panic!("http kind");
        };
        assert_eq!(r.body, Some(serde_json::json!({"a": 1})));
        let json = serde_json::to_value(Request::Http(r.clone())).expect("json");
        assert!(json.get("sni").is_none(), "absent unless TLS: {json}");
        let mut p = parts("/v1/invoices", &h, None);
        p.sni = Some("api.internal");
        let json = serde_json::to_value(build(Protocol::Http, &p, &e, &detect)).expect("json");
        assert_eq!(json["sni"], "api.internal");
        assert_eq!(json["kind"], "http");
        assert!(r.entities.is_empty());
        // Any path on an llm target is an llm request.
        assert!(matches!(
            build(Protocol::Llm, &parts("/x", &h, None), &e, &detect),
            Request::Llm(_)
        ));
        assert!(matches!(
            build(Protocol::K8s, &parts("/api/v1/pods", &h, None), &e, &detect),
            Request::K8s(_)
        ));
    }

    #[test]
    fn text_bodies_are_scanned_too() {
        let e = engine();
        let detect = e.selection(None, &["all"]).expect("sel");
        let h = HeaderMap::new();
        let body = b"q=hello&token=ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789";
        let Request::Http(r) = build(
            Protocol::Http,
            &parts("/search", &h, Some(body)),
            &e,
            &detect,
        ) else {
            panic!("http kind");
        };
        assert!(r.body.is_none());
        assert!(
            r.entities.iter().any(|x| x.kind == "github_token"),
            "{:?}",
            r.entities
        );
    }

    #[test]
    fn websocket_message_input() {
        let e = engine();
        let detect = e.selection(None, &["all"]).expect("sel");
        let h = HeaderMap::new();
        let mut p = parts("/ws", &h, None);
        (p.method, p.scheme, p.host) = ("GET", "http", "chat.internal");
        let up = p.endpoint();
        let msg = br#"{"say":"key AKIAIOSFODNN7EXAMPLE"}"#;
        let json =
            serde_json::to_value(websocket_message(&up, msg, true, &e, &detect)).expect("json");
        assert_eq!(json["kind"], "websocket");
        assert_eq!(
            (json["host"].as_str(), json["path"].as_str()),
            (Some("chat.internal"), Some("/ws"))
        );
        assert_eq!(json["direction"], "agent_to_server");
        assert_eq!(json["size"], msg.len());
        assert_eq!(json["body"]["say"], "key AKIAIOSFODNN7EXAMPLE");
        assert_eq!(json["entities"][0]["type"], "aws_access_key");
        assert_eq!(json["entities"][0]["path"], "say");
        let Request::WebSocket(bin) =
            websocket_message(&up, b"\x00\x01 bob@example.com", false, &e, &detect)
        else {
            panic!("websocket kind");
        };
        assert!(bin.text.is_none() && bin.body.is_none());
        assert_eq!(bin.entities[0].kind, "email");
    }

    #[test]
    fn request_pii_masked_before_leaving() {
        let e = engine();
        let sel = e.selection(None, &["email"]).expect("sel");
        let (out, n) = mask_request_json(
            &e,
            &sel,
            br#"{"messages":[{"content":"to bob@example.com"}]}"#,
        )
        .expect("changed");
        assert_eq!(n, 1);
        assert!(!String::from_utf8_lossy(&out).contains("bob@example.com"));
        assert!(mask_request_json(&e, &sel, br#"{"messages":[{"content":"hello"}]}"#).is_none());
    }
}
