//! A WebSocket after an allowed upgrade: relayed message by message, not
//! byte by byte, so what travels on it is masked and decided like HTTP.
//!
//! Server → agent: each text or binary message is masked with the
//! upgrade's mask selection (JSON as a tree, anything else by the text
//! detectors). Agent → server: each text or binary message is decided by
//! policy (kind `websocket`); a denied one is not forwarded, the agent gets
//! close 1008 with the reason and the server's side is closed. Pings are
//! answered on each hop by tungstenite and not forwarded (each side's
//! keepalive covers its own hop); close frames cross with code and reason.
//! Messages over [`MAX_MESSAGE`] close both sides with 1009: they cannot be
//! inspected whole. session.rs keeps permessage-deflate from being
//! negotiated, so every frame is readable here.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex as SyncMutex, PoisonError},
    time::{Duration, Instant},
};

use agentguard_mask::Selection;
use futures_util::{
    SinkExt as _, StreamExt as _,
    stream::{SplitSink, SplitStream},
};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::Mutex;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Error as WsError, Message,
        error::CapacityError,
        protocol::{CloseFrame, Role, WebSocketConfig, frame::coding::CloseCode},
    },
};
use tracing::{debug, info, warn};

use super::{input, mask, session::Session};
use crate::{
    audit::{RequestSummary, ResultRecorder},
    pipeline::{Ask, Record, Verdict},
};

/// Larger messages (and frames) are refused with close 1009.
pub const MAX_MESSAGE: usize = 16 << 20;
/// A close frame's payload is at most 125 bytes, two of them the code.
const MAX_CLOSE_REASON: usize = 123;
/// Once one side has ended, how long the other gets to finish closing.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

type Ws = WebSocketStream<TokioIo<Upgraded>>;
type Tx = Mutex<SplitSink<Ws, Message>>;

const UP: &str = "agent_to_server";
const DOWN: &str = "server_to_agent";

/// What one relayed WebSocket needs from the HTTP request that opened it.
pub(super) struct Relay {
    pub(super) session: Arc<Session>,
    pub(super) upgrade: input::Endpoint,
    /// The upgrade decision's mask list, for the server's messages.
    pub(super) sel: Arc<Selection>,
    /// The upgrade's record: what was masked is added to it at the end.
    pub(super) result: ResultRecorder,
}

/// Relays until both sides are closed.
pub(super) async fn relay(mut relay: Relay, agent: Upgraded, server: Upgraded) {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let agent =
        WebSocketStream::from_raw_socket(TokioIo::new(agent), Role::Server, Some(config)).await;
    let server =
        WebSocketStream::from_raw_socket(TokioIo::new(server), Role::Client, Some(config)).await;
    let (agent_tx, agent_rx) = agent.split();
    let (server_tx, server_rx) = server.split();
    let (agent_tx, server_tx) = (Mutex::new(agent_tx), Mutex::new(server_tx));
    let findings = SyncMutex::new(BTreeMap::new());
    let hops = Hops {
        agent: &agent_tx,
        server: &server_tx,
    };
    {
        let up = relay.upstream(agent_rx, hops);
        let down = relay.downstream(server_rx, hops, &findings);
        tokio::pin!(up, down);
        tokio::select! {
            () = &mut up => { let _ = tokio::time::timeout(CLOSE_GRACE, &mut down).await; }
            () = &mut down => { let _ = tokio::time::timeout(CLOSE_GRACE, &mut up).await; }
        }
    }
    let findings = findings
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    if !findings.is_empty() {
        let summary: Vec<String> = findings.iter().map(|(k, n)| format!("{k}:{n}")).collect();
        info!(masked = %summary.join(","), "websocket messages masked");
    }
    relay
        .result
        .masked(findings.iter().map(|(k, n)| (&**k, u64::from(*n))));
    relay.result.finish().await;
    debug!("websocket closed");
}

/// Both write halves; either direction may have to close both sides.
#[derive(Clone, Copy)]
struct Hops<'a> {
    agent: &'a Tx,
    server: &'a Tx,
}

impl Hops<'_> {
    /// Close frames to both sides (errors: that side is gone already).
    async fn close_both(self, agent: CloseFrame, server: CloseFrame) {
        let _ = self
            .agent
            .lock()
            .await
            .send(Message::Close(Some(agent)))
            .await;
        let _ = self
            .server
            .lock()
            .await
            .send(Message::Close(Some(server)))
            .await;
    }

    /// A message over the limit: 1009 both ways.
    async fn oversized(self, direction: &str, size: usize) {
        let reason = format!("agentguard: {}", oversize_reason(size));
        warn!(
            direction,
            size, "websocket message too big to inspect: closed"
        );
        let frame = close_frame(CloseCode::Size, &reason);
        self.close_both(frame.clone(), frame).await;
    }
}

impl Relay {
    /// Agent → server: each data message decided before it is forwarded.
    async fn upstream(&self, mut rx: SplitStream<Ws>, hops: Hops<'_>) {
        while let Some(msg) = self.next(&mut rx, UP, hops).await {
            match &msg {
                Message::Text(_) | Message::Binary(_) => {
                    let verdict = self.decide(&msg).await;
                    if !verdict.is_allow() {
                        let reason = format!(
                            "agentguard: {}",
                            verdict.reason().trim_start_matches("agentguard: ")
                        );
                        return hops
                            .close_both(
                                close_frame(CloseCode::Policy, &reason),
                                close_frame(CloseCode::Away, ""),
                            )
                            .await;
                    }
                }
                // The agent's close reaches the server; reading on flushes
                // tungstenite's reply and ends the stream.
                Message::Close(_) => {}
                // Answered by tungstenite on this hop.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            }
            if hops.server.lock().await.send(msg).await.is_err() {
                break;
            }
        }
        let _ = hops.server.lock().await.close().await;
    }

    /// Server → agent: each data message masked.
    async fn downstream(
        &self,
        mut rx: SplitStream<Ws>,
        hops: Hops<'_>,
        findings: &SyncMutex<BTreeMap<String, u32>>,
    ) {
        while let Some(msg) = self.next(&mut rx, DOWN, hops).await {
            let msg = match msg {
                Message::Text(t) => Message::Text(match self.mask(t.as_bytes(), findings) {
                    // Masking replaces characters with characters.
                    Some(m) => String::from_utf8_lossy(&m).into_owned().into(),
                    None => t,
                }),
                Message::Binary(b) => Message::Binary(match self.mask(&b, findings) {
                    Some(m) => m.into(),
                    None => b,
                }),
                Message::Close(_) => msg,
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            if hops.agent.lock().await.send(msg).await.is_err() {
                break;
            }
        }
        let _ = hops.agent.lock().await.close().await;
    }

    /// The next message from one side; `None` once it has ended, failed,
    /// or sent one too big (both sides are then closed with 1009).
    async fn next(
        &self,
        rx: &mut SplitStream<Ws>,
        direction: &'static str,
        hops: Hops<'_>,
    ) -> Option<Message> {
        match rx.next().await? {
            Ok(m) => Some(m),
            Err(WsError::Capacity(CapacityError::MessageTooLong { size, .. })) => {
                let summary = self.summary(direction, "message", size);
                self.refused(summary, &oversize_reason(size), Instant::now())
                    .await;
                hops.oversized(direction, size).await;
                None
            }
            Err(e) => {
                debug!(direction, "websocket: {e}");
                None
            }
        }
    }

    /// A server message as the agent may see it; `None`: unchanged.
    fn mask(&self, data: &[u8], findings: &SyncMutex<BTreeMap<String, u32>>) -> Option<Vec<u8>> {
        let (engine, _) = self.session.conn.shared.engine().ok()?;
        let mut found = findings.lock().unwrap_or_else(PoisonError::into_inner);
        mask::mask_document(engine, &self.sel, data, &mut found)
    }

    /// The policy's verdict on one message from the agent. Denials are
    /// recorded (and committed before the agent sees the close); allowed
    /// messages are counted, not recorded.
    async fn decide(&self, msg: &Message) -> Verdict {
        let started = Instant::now();
        let conn = &self.session.conn;
        let (data, is_text) = match msg {
            Message::Text(t) => (t.as_bytes(), true),
            Message::Binary(b) => (&b[..], false),
            _ => (&[][..], false),
        };
        let summary = self.summary(UP, kind(is_text), data.len());
        let Ok((engine, detect)) = conn.shared.engine() else {
            let reason = "mask engine unavailable";
            self.refused(summary, reason, started).await;
            return Verdict::Deny {
                reason: reason.into(),
            };
        };
        let request = input::websocket_message(&self.upgrade, data, is_text, engine, detect);
        let ask = Ask::new(request, summary, started).record(Record::Refusals);
        let size = data.len();
        let verdict = conn.guarded.decide(ask).await;
        if let Verdict::Deny { reason } = &verdict {
            warn!(path = self.upgrade.path, size, %reason, "websocket message denied");
            // The close goes out once the refusal is on record.
            let _ = conn.guarded.session.committed().await;
        }
        verdict
    }

    fn summary(&self, direction: &str, message: &str, size: usize) -> RequestSummary {
        RequestSummary::WebSocket {
            host: Some(self.upgrade.host.clone()),
            path: self.upgrade.path.clone(),
            direction: direction.to_owned(),
            message: message.to_owned(),
            size: size as u64,
        }
    }

    /// Records a message that was not forwarded, before the close goes out.
    async fn refused(&self, summary: RequestSummary, reason: &str, started: Instant) {
        let guarded = &self.session.conn.guarded;
        guarded.refuse(summary, reason, started).await;
        let _ = guarded.session.committed().await;
    }
}

fn kind(is_text: bool) -> &'static str {
    if is_text { "text" } else { "binary" }
}

fn oversize_reason(size: usize) -> String {
    format!(
        "websocket message of {size} bytes is over the {} MiB limit and cannot be inspected",
        MAX_MESSAGE >> 20
    )
}

/// A close frame whose reason fits the 123-byte limit (cut on a char
/// boundary).
fn close_frame(code: CloseCode, reason: &str) -> CloseFrame {
    let cut = reason.floor_char_boundary(MAX_CLOSE_REASON);
    CloseFrame {
        code,
        reason: reason[..cut].into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_the_frame() {
        let long = format!("agentguard: {}", "é".repeat(100));
        let f = close_frame(CloseCode::Policy, &long);
        assert!(f.reason.len() <= MAX_CLOSE_REASON);
        assert!(f.reason.len() >= MAX_CLOSE_REASON - 1);
        assert!(long.starts_with(f.reason.as_str()));
        assert_eq!(
            close_frame(CloseCode::Policy, "short").reason.as_str(),
            "short"
        );
    }
}
