//! One HTTP connection on hyper: the agent's side served, the server's side
//! a client connection of the same protocol. Per request: policy input →
//! decision (403 on deny; approve holds, then denies) → forward → mask the
//! response. An Upgrade is decided like any request; a WebSocket is then
//! relayed message by message (`websocket.rs`), any other upgrade's bytes
//! pass through.

use std::{
    collections::VecDeque,
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info, warn};

use super::{
    Body, BoxError, Conn, HttpError, credential, input, mask,
    upstream::{Redial, Upstream},
    websocket,
};
use crate::{
    audit::RequestSummary,
    config::Protocol,
    decide,
    pipeline::{self, Verdict},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

/// Requests whose header block is larger are answered 431 by hyper.
const MAX_HEADER_BUF: usize = 64 * 1024;

pub(super) struct Session {
    pub(super) conn: Conn,
    /// `Err`: no usable server (its certificate failed verification);
    /// every request is refused with this reason.
    upstream: Result<Upstream, String>,
    scheme: &'static str,
    upstream_proto: Proto,
}

pub async fn serve<A, U>(
    conn: Conn,
    agent: A,
    upstream: Result<U, String>,
    redial: Redial,
    proto: Proto,
    scheme: &'static str,
) -> Result<(), HttpError>
where
    A: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let upstream = match upstream {
        Err(reason) => Err(reason),
        Ok(io) => Ok(Upstream::new(io, proto, redial).await?),
    };
    let session = Arc::new(Session {
        conn,
        upstream,
        scheme,
        upstream_proto: proto,
    });
    let svc = hyper::service::service_fn(move |req| {
        let s = Arc::clone(&session);
        async move { Ok::<_, Infallible>(s.handle(req).await) }
    });
    let io = TokioIo::new(agent);
    match proto {
        Proto::H1 => {
            hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .max_buf_size(MAX_HEADER_BUF)
                .serve_connection(io, svc)
                .with_upgrades()
                .await?
        }
        Proto::H2 => {
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(MAX_HEADER_BUF as u32)
                .serve_connection(io, svc)
                .await?
        }
    }
    Ok(())
}

/// `{"error": "agentguard: <reason>"}` with the status.
pub fn refusal(status: StatusCode, reason: &str) -> Response<Body> {
    let reason = reason.strip_prefix("agentguard: ").unwrap_or(reason);
    let body = serde_json::json!({ "error": format!("agentguard: {reason}") }).to_string();
    let mut resp = Response::new(full(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed_unsync()
}

fn incoming(b: Incoming) -> Body {
    b.map_err(BoxError::from).boxed_unsync()
}

/// Connection-scoped headers never cross the proxy (RFC 9110 §7.6.1), nor
/// does Expect (hyper answered the agent's 100-continue already).
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for name in named {
        if keep_upgrade && name == "upgrade" {
            continue;
        }
        headers.remove(name.as_str());
    }
    for h in [
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "expect",
    ] {
        headers.remove(h);
    }
    if !keep_upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

fn is_upgrade(headers: &HeaderMap) -> Option<String> {
    let conn_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    let proto = headers.get(header::UPGRADE)?.to_str().ok()?;
    conn_upgrade.then(|| proto.to_ascii_lowercase())
}

impl Session {
    /// A refusal the agent's client shows well: for the Kubernetes API, a
    /// `Status` object (kubectl prints its message) that also carries the
    /// `error` field every refusal has.
    fn refuse(&self, status: StatusCode, reason: &str) -> Response<Body> {
        if self.conn.guarded.target.protocol != Protocol::K8s {
            return refusal(status, reason);
        }
        let reason = reason.strip_prefix("agentguard: ").unwrap_or(reason);
        let message = format!("agentguard: {reason}");
        let body = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": if status == StatusCode::FORBIDDEN { "Forbidden" } else { "ServiceUnavailable" },
            "code": status.as_u16(), "error": message,
        });
        let mut resp = Response::new(full(Bytes::from(body.to_string())));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }

    async fn handle(self: Arc<Self>, mut req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let mut upgrade = is_upgrade(req.headers());
        if upgrade.as_deref() == Some("h2c") {
            // An h2c upgrade would turn the rest of the connection into
            // bytes no request decision sees: the request goes on as
            // HTTP/1.1 without it (which RFC 9113 allows the server anyway).
            strip_hop_by_hop(req.headers_mut(), false);
            req.headers_mut().remove("http2-settings");
            upgrade = None;
        }
        let on_agent_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let agent_version = parts.version;
        let target = &self.conn.guarded.target;
        let host = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                parts
                    .headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })
            .or_else(|| target.host.clone())
            .unwrap_or_else(|| target.ip.clone());
        let path = parts.uri.path().to_owned();
        let mut query = parts.uri.query().map(str::to_owned);
        // The agent's own credential never reaches policy or the server.
        let credential_use = self
            .conn
            .credential
            .as_ref()
            .map(|c| credential::strip(c, &mut parts.headers, &mut query));
        // Until the request is parsed for policy: what refusals record.
        let mut summary = RequestSummary::Http {
            method: parts.method.to_string(),
            host: Some(host.clone()),
            path: path.clone(),
            query: query.clone(),
        };

        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let llm = target.protocol == Protocol::Llm || input::llm_provider(&path).is_some();
        // JSON and text bodies are read (up to the limit) before the
        // decision: policy sees them, detectors scan them.
        let want_body = input::is_json(content_type)
            || (llm && parts.method == Method::POST)
            || (parts.method != Method::GET
                && parts.method != Method::HEAD
                && content_type.is_some()
                && mask::classify(&parts.headers) == mask::Class::Text);
        let (head, rest) = if want_body {
            match buffer(body, input::MAX_JSON_BODY).await {
                Ok(b) => b,
                Err(e) => {
                    let reason = format!("reading the request body: {e}");
                    return self
                        .refuse_recorded(StatusCode::BAD_REQUEST, summary, &reason, started)
                        .await;
                }
            }
        } else {
            (Buffered::default(), Some(body))
        };
        let complete = rest.is_none();
        // Read before the decision: an unusable secret is refused (and
        // recorded) like any request the guard cannot carry.
        let secret = match &self.conn.credential {
            None => None,
            Some(c) => match c.secret().await {
                Ok(s) => Some(s),
                Err(e) => {
                    return self
                        .refuse_recorded(StatusCode::BAD_GATEWAY, summary, &e.to_string(), started)
                        .await;
                }
            },
        };
        let Ok((engine, detect_sel)) = self.conn.shared.engine() else {
            return self
                .refuse_recorded(
                    StatusCode::FORBIDDEN,
                    summary,
                    "mask engine unavailable",
                    started,
                )
                .await;
        };
        let request_parts = input::Parts {
            method: parts.method.as_str(),
            scheme: self.scheme,
            host: &host,
            sni: self.conn.sni.as_deref(),
            path: &path,
            query: query.as_deref(),
            headers: &parts.headers,
            body: (want_body && complete).then_some(&head.data[..]),
            body_truncated: want_body && !complete,
            upgrade: upgrade.clone(),
            credential: credential_use,
        };
        let request = input::build(target.protocol, &request_parts, engine, detect_sel);
        // What a WebSocket's messages are decided with.
        let websocket = (upgrade.as_deref() == Some("websocket")).then(|| request_parts.endpoint());
        summary = request_summary(&request).unwrap_or(summary);
        let is_llm = matches!(request, decide::Request::Llm(_));
        // A watch answers with one JSON object per event, for as long as
        // it lasts: masked line by line, never buffered whole.
        let is_watch = matches!(&request, decide::Request::K8s(k) if k.verb == "watch");
        // A GET (`/v1/models`) has no body to inspect; any body left
        // unread is one policy did not see.
        let unread = rest
            .as_ref()
            .is_some_and(|b| !hyper::body::Body::is_end_stream(b));
        if is_llm && unread {
            let reason = if want_body {
                format!(
                    "LLM request body over {} bytes cannot be inspected",
                    input::MAX_JSON_BODY
                )
            } else {
                format!(
                    "an LLM request body policy cannot read ({} without a JSON content type)",
                    parts.method
                )
            };
            return self
                .refuse_recorded(StatusCode::FORBIDDEN, summary, &reason, started)
                .await;
        }
        // What the guard refuses after an allow is recorded as the deny
        // the agent gets.
        let unusable = self.upstream.as_ref().err().cloned();
        let ask = pipeline::Ask::new(request, summary, started)
            .mask_with(Some(engine))
            .unusable(unusable);
        let (sel, audit) = match self.conn.guarded.decide(ask).await {
            Verdict::Allow {
                mask: Some(sel),
                audit: Some(audit),
                reason,
            } => {
                info!(method = %parts.method, path, %reason, "allowed");
                (Arc::new(sel), audit)
            }
            Verdict::Allow { .. } => {
                return self.refuse(StatusCode::FORBIDDEN, "internal error: no mask plan");
            }
            Verdict::Deny { reason } => {
                return self
                    .released(self.refuse(StatusCode::FORBIDDEN, &reason))
                    .await;
            }
        };
        let Ok(upstream) = &self.upstream else {
            return self.refuse(StatusCode::FORBIDDEN, "internal error: no upstream");
        };

        // The prompt's PII is masked before it leaves the host.
        let mut head = head;
        if is_llm
            && complete
            && let Some((masked, n)) = input::mask_request_json(engine, &sel, &head.data)
        {
            info!(count = n, "prompt masked before forwarding");
            head.data = Bytes::from(masked);
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(head.data.len()));
        }

        // Towards the server.
        strip_hop_by_hop(&mut parts.headers, upgrade.is_some());
        if websocket.is_some() {
            // Compressed frames could not be inspected (tungstenite does
            // not inflate them): no extension is offered upstream.
            parts.headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
        }
        // With an injected credential, replies come uncompressed: an echo
        // of the secret is found in every body, even one passed as opaque.
        let gzip_ok = secret.is_none()
            && parts
                .headers
                .get(header::ACCEPT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.to_ascii_lowercase().contains("gzip"));
        // Only encodings this proxy can decode (and so mask) are asked for.
        if gzip_ok {
            parts
                .headers
                .insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        } else {
            parts.headers.remove(header::ACCEPT_ENCODING);
        }
        let mut pq = match (&self.conn.credential, &query) {
            (None, _) => parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned(),
            // The query as stripped of the agent's credential parameter.
            (Some(_), Some(q)) => format!("{path}?{q}"),
            (Some(_), None) => path.clone(),
        };
        // Set last, after policy input and the record were built.
        let needles = match (&self.conn.credential, &secret) {
            (Some(c), Some(s)) => match credential::inject(c, s, &mut parts.headers, &mut pq) {
                Ok(n) => n,
                Err(reason) => {
                    return self
                        .released(self.refuse(StatusCode::BAD_GATEWAY, &reason))
                        .await;
                }
            },
            _ => Vec::new(),
        };
        parts.uri = match self.upstream_proto {
            Proto::H1 => {
                if !parts.headers.contains_key(header::HOST)
                    && let Ok(v) = HeaderValue::from_str(&host)
                {
                    parts.headers.insert(header::HOST, v);
                }
                parts.version = http::Version::HTTP_11;
                pq.parse::<Uri>()
            }
            Proto::H2 => {
                parts.headers.remove(header::HOST);
                parts.version = http::Version::HTTP_2;
                format!("{}://{host}{pq}", self.scheme).parse::<Uri>()
            }
        }
        .unwrap_or_default();
        let body = Replay {
            head: if head.data.is_empty() {
                VecDeque::new()
            } else {
                VecDeque::from([Frame::data(head.data)])
            },
            trailers: head.trailers,
            rest,
        };
        let upstream_req = Request::from_parts(parts, body.boxed_unsync());
        let method = upstream_req.method().clone();
        let mut resp = match upstream.send(upstream_req).await {
            Ok(r) => r,
            Err(e) => {
                warn!(%method, path, "upstream failed: {e}");
                let resp = self.refuse(StatusCode::BAD_GATEWAY, &format!("upstream: {e}"));
                return self.released(resp).await;
            }
        };

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(agent_side) = on_agent_upgrade
        {
            let mut result = self.conn.guarded.session.result_recorder(audit);
            result.complete(resp.status().to_string()).await;
            if websocket.is_some()
                && resp
                    .headers()
                    .contains_key(header::SEC_WEBSOCKET_EXTENSIONS)
            {
                let reason = "the server negotiated a WebSocket extension that was not offered (agentguard cannot inspect compressed frames)";
                warn!(%method, path, %reason, "upgrade refused");
                result.finish().await;
                return self
                    .released(self.refuse(StatusCode::BAD_GATEWAY, reason))
                    .await;
            }
            let upstream_side = hyper::upgrade::on(&mut resp);
            let relay = match websocket {
                Some(upgrade) => Some(websocket::Relay {
                    session: Arc::clone(&self),
                    upgrade,
                    sel,
                    result,
                }),
                None => {
                    result.finish().await;
                    None
                }
            };
            // In the connection's span: its log lines name the agent.
            let span = tracing::Span::current();
            let upgraded = async move {
                match (tokio::try_join!(agent_side, upstream_side), relay) {
                    (Ok((a, u)), Some(relay)) => websocket::relay(relay, a, u).await,
                    (Ok((a, u)), None) => {
                        let (mut a, mut u) = (TokioIo::new(a), TokioIo::new(u));
                        let r = tokio::io::copy_bidirectional(&mut a, &mut u).await;
                        debug!("upgraded connection closed: {r:?}");
                    }
                    (Err(e), relay) => {
                        debug!("upgrade failed: {e}");
                        if let Some(r) = relay {
                            r.result.finish().await;
                        }
                    }
                }
            };
            tokio::spawn(tracing::Instrument::instrument(upgraded, span));
            info!(%method, path, upgrade = ?upgrade, "upgraded");
            let (mut rp, _) = resp.into_parts();
            strip_hop_by_hop(&mut rp.headers, true);
            return self
                .released(Response::from_parts(rp, full(Bytes::new())))
                .await;
        }

        // Towards the agent.
        let (mut rparts, rbody) = resp.into_parts();
        if let Some(c) = &self.conn.credential {
            if rparts.status == StatusCode::UNAUTHORIZED {
                // The stored secret is wrong or revoked: the operator's to
                // fix, and the agent must not think it should bring its own.
                let reason = format!(
                    "the server refused credential `{}` ({}); the operator must update it",
                    c.name(),
                    rparts.status
                );
                let summary = RequestSummary::Other {
                    summary: format!("{method} {path}: credential rejected"),
                };
                self.conn.guarded.refuse(summary, &reason, started).await;
                return self
                    .released(self.refuse(StatusCode::BAD_GATEWAY, &reason))
                    .await;
            }
            credential::redact_headers(&mut rparts.headers, &needles);
        }
        let connection = rparts
            .headers
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        // HTTP/1.0 closes unless it says keep-alive.
        let close = connection.contains("close")
            || (rparts.version == http::Version::HTTP_10 && !connection.contains("keep-alive"));
        rparts.version = agent_version;
        strip_hop_by_hop(&mut rparts.headers, false);
        if close && self.upstream_proto == Proto::H1 {
            // The server is done with this connection; so is the agent.
            rparts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let bodiless = method == Method::HEAD
            || rparts.status.is_informational()
            || rparts.status == StatusCode::NO_CONTENT
            || rparts.status == StatusCode::NOT_MODIFIED;
        let class = match (bodiless, mask::classify(&rparts.headers)) {
            (true, _) => mask::Class::Opaque,
            (false, mask::Class::Json) if is_watch => mask::Class::Lines,
            (false, c) => c,
        };
        let mut result = self.conn.guarded.session.result_recorder(audit);
        result.complete(rparts.status.to_string()).await;
        if class == mask::Class::Opaque {
            result.finish().await;
            let body = redacted(incoming(rbody), &needles);
            return self.released(Response::from_parts(rparts, body)).await;
        }
        let encoding = match mask::encoding(&rparts.headers) {
            Ok(e) => e,
            Err(enc) => {
                let reason = format!(
                    "cannot inspect a response with content-encoding `{enc}` (agentguard asked the server for gzip or identity)"
                );
                warn!(%method, path, %reason, "response refused");
                result.finish().await;
                return self
                    .released(self.refuse(StatusCode::BAD_GATEWAY, &reason))
                    .await;
            }
        };
        rparts.headers.remove(header::CONTENT_LENGTH);
        rparts.headers.remove(header::CONTENT_ENCODING);
        // What was masked goes into the record when the body is complete.
        let body = mask::masked_body(Arc::clone(engine), sel, class, encoding, rbody, result);
        let body = redacted(body.boxed_unsync(), &needles);
        self.released(Response::from_parts(rparts, body)).await
    }

    /// A refusal that needed no policy, recorded like any deny.
    async fn refuse_recorded(
        &self,
        status: StatusCode,
        summary: RequestSummary,
        reason: &str,
        started: Instant,
    ) -> Response<Body> {
        self.conn.guarded.refuse(summary, reason, started).await;
        self.released(self.refuse(status, reason)).await
    }

    /// The response goes out once this request's decision is committed
    /// (see audit.rs), so a crash never loses the record of a request the
    /// agent saw answered. Its mask counts follow when the body is done.
    async fn released(&self, resp: Response<Body>) -> Response<Body> {
        match self.conn.guarded.session.committed().await {
            Ok(()) => resp,
            Err(e) => self.refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("audit log unavailable: {e}"),
            ),
        }
    }
}

/// `body` with the injected secret replaced wherever the server echoed it.
fn redacted(body: Body, needles: &[Vec<u8>]) -> Body {
    if needles.is_empty() {
        return body;
    }
    credential::Redacted::new(body, needles.to_vec()).boxed_unsync()
}

/// What the audit log shows for a request, from what policy saw.
fn request_summary(request: &decide::Request) -> Option<RequestSummary> {
    Some(match request {
        decide::Request::Http(h) => http_summary(h),
        decide::Request::K8s(k) => RequestSummary::K8s {
            verb: k.verb.clone(),
            group: k.group.clone(),
            // Non-resource paths (/version, discovery) show as the path.
            resource: k.resource.clone().unwrap_or_else(|| k.path.clone()),
            namespace: k.namespace.clone(),
            name: k.name.clone(),
            subresource: k.subresource.clone(),
        },
        decide::Request::Llm(l) => RequestSummary::Llm {
            provider: l.provider.to_owned(),
            model: l.model.clone(),
            path: l.http.endpoint.path.clone(),
        },
        _ => return None,
    })
}

fn http_summary(h: &input::HttpRequest) -> RequestSummary {
    RequestSummary::Http {
        method: h.endpoint.method.clone(),
        host: Some(h.endpoint.host.clone()),
        path: h.endpoint.path.clone(),
        query: (!h.endpoint.query.is_empty()).then(|| h.endpoint.query.clone()),
    }
}

#[derive(Default)]
struct Buffered {
    data: Bytes,
    trailers: Option<HeaderMap>,
}

/// Reads the body up to `limit` bytes. Whole: `(all, None)`; longer:
/// `(first part, Some(rest))`, to be forwarded in that order.
async fn buffer(
    mut body: Incoming,
    limit: usize,
) -> Result<(Buffered, Option<Incoming>), hyper::Error> {
    let mut data = Vec::new();
    let mut trailers = None;
    while data.len() <= limit {
        match body.frame().await {
            None => {
                return Ok((
                    Buffered {
                        data: Bytes::from(data),
                        trailers,
                    },
                    None,
                ));
            }
            Some(frame) => match frame?.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            },
        }
    }
    Ok((
        Buffered {
            data: Bytes::from(data),
            trailers,
        },
        Some(body),
    ))
}

/// Frames already read, then the rest of the original body.
struct Replay {
    head: VecDeque<Frame<Bytes>>,
    trailers: Option<HeaderMap>,
    rest: Option<Incoming>,
}

impl hyper::body::Body for Replay {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(f) = self.head.pop_front() {
            return Poll::Ready(Some(Ok(f)));
        }
        if let Some(rest) = self.rest.as_mut() {
            return Pin::new(rest).poll_frame(cx).map_err(BoxError::from);
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
    fn is_end_stream(&self) -> bool {
        self.head.is_empty()
            && self.trailers.is_none()
            && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }
    fn size_hint(&self) -> SizeHint {
        let head: u64 = self
            .head
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| d.len() as u64)
            .sum();
        match &self.rest {
            None => SizeHint::with_exact(head),
            Some(r) => {
                let mut h = r.size_hint();
                h.set_lower(h.lower() + head);
                if let Some(u) = h.upper() {
                    h.set_upper(u + head);
                }
                h
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-trace"),
        );
        h.insert("x-trace", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(is_upgrade(&h).as_deref(), Some("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert!(h.contains_key(header::UPGRADE) && h.contains_key(header::CONNECTION));
    }

    #[test]
    fn refusal_body() {
        let r = refusal(StatusCode::FORBIDDEN, "agentguard: no");
        assert_eq!(r.status(), 403);
        let r2 = refusal(StatusCode::FORBIDDEN, "HTTP: POST / denied");
        assert_eq!(r2.headers()[header::CONTENT_TYPE], "application/json");
    }
}
