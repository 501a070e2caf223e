//! The server side of one guarded HTTP connection: a hyper client
//! connection of the agent's protocol, dialled again when the server closed
//! it while the agent's connection lives on (an idle keep-alive timeout):
//! without that, the agent's next request would fail.

use std::{net::SocketAddr, time::Duration};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;
use tracing::debug;

use super::{Body, session::Proto};

/// How to reach the server again.
pub struct Redial {
    pub dst: SocketAddr,
    /// For TLS: the verifying connector (with the ALPN first negotiated)
    /// and the name to verify.
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
    pub timeout: Duration,
}

enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

pub struct Upstream {
    proto: Proto,
    /// HTTP/1.1 carries one request at a time; the lock keeps it so (an
    /// HTTP/2 sender is cloned out of it, and requests run concurrently).
    current: tokio::sync::Mutex<Option<Sender>>,
    redial: Redial,
}

async fn handshake<U>(io: U, proto: Proto) -> Result<Sender, hyper::Error>
where
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Ok(match proto {
        Proto::H1 => {
            let (s, c) = http1::Builder::new().handshake(TokioIo::new(io)).await?;
            tokio::spawn(async move {
                if let Err(e) = c.with_upgrades().await {
                    debug!("upstream connection: {e}");
                }
            });
            Sender::H1(s)
        }
        Proto::H2 => {
            let (s, c) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(TokioIo::new(io))
                .await?;
            tokio::spawn(async move {
                if let Err(e) = c.await {
                    debug!("upstream connection: {e}");
                }
            });
            Sender::H2(s)
        }
    })
}

impl Upstream {
    pub async fn new<U>(io: U, proto: Proto, redial: Redial) -> Result<Self, hyper::Error>
    where
        U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let sender = handshake(io, proto).await?;
        Ok(Self {
            proto,
            current: tokio::sync::Mutex::new(Some(sender)),
            redial,
        })
    }

    async fn dial(&self) -> Result<Sender, String> {
        let r = &self.redial;
        let tcp = tokio::time::timeout(r.timeout, TcpStream::connect(r.dst))
            .await
            .map_err(|_| format!("reconnecting to {} timed out", r.dst))?
            .map_err(|e| format!("reconnecting to {}: {e}", r.dst))?;
        let _ = tcp.set_nodelay(true);
        let sender = match &r.tls {
            None => handshake(tcp, self.proto).await,
            Some((connector, name)) => {
                let tls = tokio::time::timeout(r.timeout, connector.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| "upstream TLS handshake timed out".to_owned())?
                    .map_err(|e| format!("upstream TLS: {e}"))?;
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                if h2 != (self.proto == Proto::H2) {
                    return Err("the server changed its protocol (ALPN) on reconnect".into());
                }
                handshake(tls, self.proto).await
            }
        };
        sender.map_err(|e| format!("upstream handshake: {e}"))
    }

    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, String> {
        let mut current = self.current.lock().await;
        let alive = match current.as_mut() {
            Some(Sender::H1(s)) => !s.is_closed() && s.ready().await.is_ok(),
            Some(Sender::H2(s)) => !s.is_closed() && s.ready().await.is_ok(),
            None => false,
        };
        if !alive {
            debug!("upstream connection closed by the server: dialling again");
            *current = Some(self.dial().await?);
        }
        match current.as_mut() {
            Some(Sender::H1(s)) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await.map_err(|e| e.to_string())
            }
            Some(Sender::H2(s)) => {
                let mut s = s.clone();
                drop(current);
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await.map_err(|e| e.to_string())
            }
            None => Err("no upstream connection".into()),
        }
    }
}
