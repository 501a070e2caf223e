//! What the agent speaks, from its first bytes: a TLS ClientHello, the
//! HTTP/2 prior-knowledge preface, or an HTTP/1.x request line. The bytes
//! read are kept and replayed to whichever codec handles the connection
//! ([`Prefixed`]), so detection never loses data.
//!
//! Trade-off (as in linkerd's detect): one bounded wait for the client's
//! first bytes. HTTP and TLS clients always speak first; a server-first
//! protocol on an HTTP target times out and is refused.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A ClientHello larger than this is refused (real ones are < 2 KiB; with
/// post-quantum key shares, < 8 KiB).
const MAX_CLIENT_HELLO: usize = 64 * 1024;
/// Longest method token we wait for before calling the bytes "not HTTP".
const MAX_METHOD: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Tls,
    H2Prior,
    H1,
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("client sent nothing within {0:?}")]
    Timeout(Duration),
    #[error("client closed before sending a request")]
    Closed,
    #[error("TLS ClientHello malformed: {0}")]
    BadHello(&'static str),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Classifies what is buffered; `None`: need more bytes.
pub fn classify(buf: &[u8]) -> Option<Detected> {
    let first = *buf.first()?;
    if first == 0x16 {
        return Some(Detected::Tls);
    }
    if buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buf) {
        return None;
    }
    if buf.starts_with(H2_PREFACE) {
        return Some(Detected::H2Prior);
    }
    match buf.iter().position(|&b| b == b' ') {
        Some(0) => Some(Detected::Other),
        Some(n) if n <= MAX_METHOD && buf[..n].iter().all(u8::is_ascii_uppercase) => {
            Some(Detected::H1)
        }
        Some(_) => Some(Detected::Other),
        None if buf.len() < MAX_METHOD && buf.iter().all(u8::is_ascii_uppercase) => None,
        None => Some(Detected::Other),
    }
}

/// Reads until the first bytes say what the client speaks.
pub async fn detect<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    timeout: Duration,
) -> Result<Detected, DetectError> {
    let read = async {
        loop {
            if let Some(d) = classify(buf) {
                return Ok(d);
            }
            if rd.read_buf(buf).await? == 0 {
                return Err(DetectError::Closed);
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| DetectError::Timeout(timeout))?
}

/// What a ClientHello asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    pub sni: Option<String>,
    pub alpn: Vec<Vec<u8>>,
}

/// Reads (into `buf`) until a whole ClientHello handshake message is
/// buffered — it may span several records — and parses it.
pub async fn read_client_hello<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    timeout: Duration,
) -> Result<ClientHello, DetectError> {
    let read = async {
        loop {
            match parse_client_hello(buf)? {
                Some(hello) => return Ok(hello),
                None if buf.len() > MAX_CLIENT_HELLO => {
                    return Err(DetectError::BadHello("larger than 64 KiB"));
                }
                None => {
                    if rd.read_buf(buf).await? == 0 {
                        return Err(DetectError::Closed);
                    }
                }
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| DetectError::Timeout(timeout))?
}

/// `Ok(None)`: incomplete. Reassembles the handshake message from the
/// records' payloads, then walks the extensions for SNI (0) and ALPN (16).
pub fn parse_client_hello(buf: &[u8]) -> Result<Option<ClientHello>, DetectError> {
    let mut handshake = Vec::new();
    let mut rest = buf;
    loop {
        if rest.len() < 5 {
            return Ok(None);
        }
        if rest[0] != 0x16 {
            return Err(DetectError::BadHello("not a handshake record"));
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if rest.len() < 5 + len {
            return Ok(None);
        }
        handshake.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        if handshake.len() >= 4 {
            if handshake[0] != 1 {
                return Err(DetectError::BadHello(
                    "first handshake message is not a ClientHello",
                ));
            }
            let body_len =
                u32::from_be_bytes([0, handshake[1], handshake[2], handshake[3]]) as usize;
            if handshake.len() >= 4 + body_len {
                return hello_body(&handshake[4..4 + body_len]).map(Some);
            }
        }
    }
}

fn hello_body(mut b: &[u8]) -> Result<ClientHello, DetectError> {
    let short = DetectError::BadHello("truncated");
    // version, random
    b = b.get(34..).ok_or(DetectError::BadHello("truncated"))?;
    let sid = usize::from(*b.first().ok_or(DetectError::BadHello("truncated"))?);
    b = b.get(1 + sid..).ok_or(DetectError::BadHello("truncated"))?;
    let suites = u16_at(b).ok_or(DetectError::BadHello("truncated"))?;
    b = b
        .get(2 + suites..)
        .ok_or(DetectError::BadHello("truncated"))?;
    let comp = usize::from(*b.first().ok_or(DetectError::BadHello("truncated"))?);
    b = b
        .get(1 + comp..)
        .ok_or(DetectError::BadHello("truncated"))?;
    let mut hello = ClientHello::default();
    if b.is_empty() {
        return Ok(hello);
    }
    let ext_len = u16_at(b).ok_or(short)?;
    let mut exts = b
        .get(2..2 + ext_len)
        .ok_or(DetectError::BadHello("extensions truncated"))?;
    while exts.len() >= 4 {
        let ty = u16::from_be_bytes([exts[0], exts[1]]);
        let len = usize::from(u16::from_be_bytes([exts[2], exts[3]]));
        let data = exts
            .get(4..4 + len)
            .ok_or(DetectError::BadHello("extension truncated"))?;
        match ty {
            0 => hello.sni = sni(data),
            16 => hello.alpn = alpn(data),
            _ => {}
        }
        exts.advance(4 + len);
    }
    Ok(hello)
}

fn u16_at(b: &[u8]) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes([*b.first()?, *b.get(1)?])))
}

fn sni(data: &[u8]) -> Option<String> {
    let list = data.get(2..2 + u16_at(data)?)?;
    // One entry of type host_name (0) is all RFC 6066 allows.
    if *list.first()? != 0 {
        return None;
    }
    let len = u16_at(list.get(1..)?)?;
    let name = std::str::from_utf8(list.get(3..3 + len)?).ok()?;
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    valid.then(|| name.to_ascii_lowercase())
}

fn alpn(data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let Some(len) = u16_at(data) else {
        return out;
    };
    let mut list = data.get(2..2 + len).unwrap_or_default();
    while let Some(&n) = list.first() {
        let n = usize::from(n);
        let Some(p) = list.get(1..1 + n) else { break };
        out.push(p.to_vec());
        list = &list[1 + n..];
    }
    out
}

/// A stream whose first reads return bytes already consumed (by
/// detection), then the stream itself.
pub struct Prefixed<S> {
    prefix: BytesMut,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: BytesMut, inner: S) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello with the given extensions (type, data), in one record
    /// or split into records of `split` bytes.
    pub(crate) fn hello(exts: &[(u16, Vec<u8>)], split: usize) -> Vec<u8> {
        let mut ext = Vec::new();
        for (ty, data) in exts {
            ext.extend_from_slice(&ty.to_be_bytes());
            ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
            ext.extend_from_slice(data);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut out = Vec::new();
        for chunk in hs.chunks(split) {
            out.extend_from_slice(&[0x16, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    pub(crate) fn sni_ext(name: &str) -> (u16, Vec<u8>) {
        let mut d = vec![];
        d.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        d.push(0);
        d.extend_from_slice(&(name.len() as u16).to_be_bytes());
        d.extend_from_slice(name.as_bytes());
        (0, d)
    }

    fn alpn_ext(protos: &[&str]) -> (u16, Vec<u8>) {
        let mut list = vec![];
        for p in protos {
            list.push(p.len() as u8);
            list.extend_from_slice(p.as_bytes());
        }
        let mut d = (list.len() as u16).to_be_bytes().to_vec();
        d.extend_from_slice(&list);
        (16, d)
    }

    #[test]
    fn classify_first_bytes() {
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"\x16\x03\x01"), Some(Detected::Tls));
        assert_eq!(classify(b"PRI * HT"), None);
        assert_eq!(classify(H2_PREFACE), Some(Detected::H2Prior));
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::H1));
        assert_eq!(classify(b"DELETE /x"), Some(Detected::H1));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"SSH-2.0-OpenSSH\r\n"), Some(Detected::Other));
        assert_eq!(classify(b"get / HTTP/1.1"), Some(Detected::Other));
        assert_eq!(classify(b"\x00\x00\x00\x08"), Some(Detected::Other));
        assert_eq!(
            classify(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
            Some(Detected::Other)
        );
    }

    #[test]
    fn client_hello_sni_and_alpn() {
        let raw = hello(
            &[sni_ext("API.example.com"), alpn_ext(&["h2", "http/1.1"])],
            1 << 14,
        );
        let h = parse_client_hello(&raw).expect("parse").expect("complete");
        assert_eq!(h.sni.as_deref(), Some("api.example.com"));
        assert_eq!(h.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        for cut in 0..raw.len() {
            assert!(
                parse_client_hello(&raw[..cut])
                    .expect("prefix ok")
                    .is_none()
            );
        }
    }

    #[test]
    fn client_hello_across_records_and_without_sni() {
        let raw = hello(&[sni_ext("a.b"), alpn_ext(&["http/1.1"])], 7);
        let h = parse_client_hello(&raw).expect("parse").expect("complete");
        assert_eq!(h.sni.as_deref(), Some("a.b"));
        let raw = hello(&[alpn_ext(&["h2"])], 1 << 14);
        let h = parse_client_hello(&raw).expect("parse").expect("complete");
        assert_eq!(h.sni, None);
    }

    #[test]
    fn client_hello_garbage_is_an_error_not_a_panic() {
        assert!(parse_client_hello(b"\x16\x03\x01\x00\x04\x02\x00\x00\x00").is_err());
        assert!(parse_client_hello(b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\xff").is_err());
        let mut raw = hello(&[sni_ext("x.y")], 1 << 14);
        // Announce more extension bytes than there are.
        let n = raw.len();
        raw[n - 12] = 0xff;
        let _ = parse_client_hello(&raw);
    }

    #[tokio::test]
    async fn prefixed_replays_then_reads() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b" world")
            .await
            .expect("write");
        drop(a);
        let mut p = Prefixed::new(BytesMut::from(&b"hello"[..]), b);
        let mut s = String::new();
        p.read_to_string(&mut s).await.expect("read");
        assert_eq!(s, "hello world");
    }
}
