//! Credential injection for HTTP targets (credentials.rs holds the
//! secrets): whatever credential the agent sent is removed before policy
//! sees the request, the stored one is set after the decision, just before
//! the request leaves, and a reply that echoes it (a debug endpoint, an
//! error message quoting the key) has it replaced before the agent reads it.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, header};
use hyper::body::{Frame, SizeHint};

use super::{Body, BoxError};
use crate::credentials::{Credential, CredentialUse, HttpInject, Secret};

/// What a reply shows where it echoed the secret.
const REDACTED: &[u8] = b"[agentguard: redacted credential]";

/// Headers that carry a credential in the APIs agents call (OpenAI,
/// Anthropic, Azure, Google, proxies): the agent's own are removed.
const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
];

/// Removes the agent's own credential (headers, and the query parameter
/// the credential uses); `query` is rewritten without it. Returns what
/// policy is told, with `agent_sent` saying whether the agent brought one.
pub fn strip(
    credential: &Credential,
    headers: &mut HeaderMap,
    query: &mut Option<String>,
) -> CredentialUse {
    let config = &credential.config;
    let mut sent = false;
    for name in CREDENTIAL_HEADERS
        .iter()
        .copied()
        .chain(config.header.as_deref())
    {
        sent |= headers.remove(name).is_some();
        // Repeated headers: `remove` takes the first only.
        while headers.remove(name).is_some() {}
    }
    if config.inject == HttpInject::Query
        && let (Some(param), Some(q)) = (config.query.as_deref(), query.as_deref())
    {
        let pairs: Vec<(String, String)> =
            form_urlencoded::parse(q.as_bytes()).into_owned().collect();
        if pairs.iter().any(|(k, _)| k == param) {
            sent = true;
            let kept = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs.iter().filter(|(k, _)| k != param))
                .finish();
            *query = (!kept.is_empty()).then_some(kept);
        }
    }
    CredentialUse {
        name: credential.name().to_owned(),
        injected: true,
        agent_sent: Some(sent),
        agent_db_user: None,
    }
}

/// Sets the stored credential on the request leaving for the server
/// (`path_and_query` is what the upstream URI is built from). Returns the
/// byte strings a reply must not echo.
pub fn inject(
    credential: &Credential,
    secret: &Secret,
    headers: &mut HeaderMap,
    path_and_query: &mut String,
) -> Result<Vec<Vec<u8>>, String> {
    let config = &credential.config;
    let value = |s: String| {
        let mut v = HeaderValue::from_str(&s).map_err(|_| {
            format!(
                "credential `{}`: the secret cannot be sent in a header",
                credential.name()
            )
        })?;
        v.set_sensitive(true);
        Ok::<_, String>(v)
    };
    let raw = secret.expose();
    let mut needles = vec![raw.as_bytes().to_vec()];
    match config.inject {
        HttpInject::Bearer => {
            headers.insert(header::AUTHORIZATION, value(format!("Bearer {raw}"))?);
        }
        HttpInject::Basic => {
            let user = config.username.as_deref().unwrap_or_default();
            let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{raw}"));
            needles.push(encoded.as_bytes().to_vec());
            headers.insert(header::AUTHORIZATION, value(format!("Basic {encoded}"))?);
        }
        HttpInject::Header => {
            let name = config.header.as_deref().unwrap_or("x-api-key");
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("credential `{}`: bad header name", credential.name()))?;
            headers.insert(name, value(raw.to_owned())?);
        }
        HttpInject::Query => {
            let param = config.query.as_deref().unwrap_or("key");
            let pair = form_urlencoded::Serializer::new(String::new())
                .append_pair(param, raw)
                .finish();
            needles.push(pair.as_bytes().to_vec());
            path_and_query.push(if path_and_query.contains('?') {
                '&'
            } else {
                '?'
            });
            path_and_query.push_str(&pair);
        }
    }
    Ok(needles)
}

/// A response header that quotes the secret is replaced.
pub fn redact_headers(headers: &mut HeaderMap, needles: &[Vec<u8>]) {
    for value in headers.values_mut() {
        if needles.iter().any(|n| contains(value.as_bytes(), n)) {
            let mut bytes = value.as_bytes().to_vec();
            for n in needles {
                bytes = replace(&bytes, n);
            }
            *value = HeaderValue::from_bytes(&bytes)
                .unwrap_or_else(|_| HeaderValue::from_static("[agentguard: redacted credential]"));
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && memchr::memmem::find(hay, needle).is_some()
}

fn replace(hay: &[u8], needle: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut rest = hay;
    while let Some(at) = memchr::memmem::find(rest, needle) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(REDACTED);
        rest = &rest[at + needle.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// A reply body with every occurrence of the secret replaced, also where
/// it is split across frames: a frame's end that could begin the secret
/// waits for the next frame.
pub struct Redacted {
    inner: Body,
    needles: Arc<Vec<Vec<u8>>>,
    held: BytesMut,
    trailers: Option<HeaderMap>,
    done: bool,
}

impl Redacted {
    pub fn new(inner: Body, needles: Vec<Vec<u8>>) -> Self {
        Self {
            inner,
            needles: Arc::new(needles.into_iter().filter(|n| !n.is_empty()).collect()),
            held: BytesMut::new(),
            trailers: None,
            done: false,
        }
    }

    fn longest(&self) -> usize {
        self.needles.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// Replaces what is whole in `held`; returns what may go out now.
    fn release(&mut self, all: bool) -> Bytes {
        let mut buf = self.held.split().to_vec();
        for n in self.needles.iter() {
            buf = replace(&buf, n);
        }
        // Held back: only an end that could begin a secret (usually
        // nothing, so a stream's events are not delayed).
        let keep = if all {
            0
        } else {
            let most = self.longest().saturating_sub(1).min(buf.len());
            (1..=most)
                .rev()
                .find(|&k| {
                    let tail = &buf[buf.len() - k..];
                    self.needles.iter().any(|n| n.starts_with(tail))
                })
                .unwrap_or(0)
        };
        let cut = buf.len() - keep;
        self.held.extend_from_slice(&buf[cut..]);
        buf.truncate(cut);
        Bytes::from(buf)
    }
}

impl hyper::body::Body for Redacted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.done {
                if !self.held.is_empty() {
                    let out = self.release(true);
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => self.done = true,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        self.held.extend_from_slice(&data);
                        let out = self.release(false);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(mut t) = frame.into_trailers() {
                            let needles = Arc::clone(&self.needles);
                            redact_headers(&mut t, &needles);
                            self.trailers = Some(t);
                        }
                        self.done = true;
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.held.is_empty() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt as _, StreamBody};

    fn body_of(chunks: Vec<&'static [u8]>) -> Body {
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, BoxError>(Frame::data(Bytes::from_static(c))));
        StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    #[tokio::test]
    async fn secret_split_across_frames_is_replaced() {
        let body = body_of(vec![
            b"echo: Bearer sk-se",
            b"cret-",
            b"42 and sk-secret-42",
            b"! sk-",
            b"other",
        ]);
        let out = Redacted::new(body, vec![b"sk-secret-42".to_vec()])
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let s = String::from_utf8(out.to_vec()).expect("utf8");
        assert_eq!(
            s,
            "echo: Bearer [agentguard: redacted credential] and [agentguard: redacted credential]! sk-other"
        );
    }

    #[tokio::test]
    async fn frames_that_cannot_begin_the_secret_are_not_held() {
        let body = body_of(vec![b"data: {\"a\": 1}\n\n", b"data: [DONE]\n\n"]);
        let mut r = Redacted::new(body, vec![b"sk-secret-42".to_vec()]);
        let first = r.frame().await.expect("frame").expect("ok");
        assert_eq!(
            first.into_data().expect("data"),
            Bytes::from_static(b"data: {\"a\": 1}\n\n")
        );
    }

    #[test]
    fn headers_quoting_the_secret_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-echo", HeaderValue::from_static("key=sk-secret-42"));
        h.insert("x-other", HeaderValue::from_static("fine"));
        redact_headers(&mut h, &[b"sk-secret-42".to_vec()]);
        assert_eq!(h["x-echo"], "key=[agentguard: redacted credential]");
        assert_eq!(h["x-other"], "fine");
    }
}
