//! PostgreSQL protocol v3 framing. Two-phase decoding, as in mini-redis and
//! postgres-protocol: first "is a whole message buffered?" (`Ok(None)` means
//! wait for more bytes — never an error), then split it off as its original
//! bytes, which are forwarded untouched unless something must change.

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};

/// Startup packets have no tag; these codes sit where the protocol version
/// would be.
pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;
pub const PROTOCOL_V3: u32 = 3 << 16;

/// Startup packets are small (the server itself caps them at 10000 bytes).
const MAX_STARTUP: usize = 10_000;

pub mod tag {
    // Frontend
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const SYNC: u8 = b'S';
    pub const CLOSE: u8 = b'C';
    pub const FLUSH: u8 = b'H';
    pub const TERMINATE: u8 = b'X';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    // Backend
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const ROW_DESCRIPTION: u8 = b'T';
    pub const NO_DATA: u8 = b'n';
    pub const DATA_ROW: u8 = b'D';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const EMPTY_QUERY: u8 = b'I';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const AUTHENTICATION: u8 = b'R';
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("message length {0} is invalid (below 4 or above the {1}-byte limit)")]
    BadLength(usize, usize),
    #[error("startup packet of {0} bytes exceeds the {MAX_STARTUP}-byte limit")]
    StartupTooLong(usize),
    #[error("unsupported protocol version {0}.{1}")]
    Protocol(u16, u16),
    #[error("malformed {0} message: {1}")]
    Malformed(&'static str, &'static str),
}

/// The first packet(s) a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    SslRequest,
    GssEncRequest,
    /// Forwarded as is (16 bytes).
    Cancel(Bytes),
    Startup {
        raw: Bytes,
        params: Vec<(String, String)>,
    },
}

pub fn decode_startup(buf: &mut BytesMut) -> Result<Option<Startup>, CodecError> {
    let Some(len) = peek_u32(buf, 0) else {
        return Ok(None);
    };
    let len = len as usize;
    if !(8..=MAX_STARTUP).contains(&len) {
        return Err(if len > MAX_STARTUP {
            CodecError::StartupTooLong(len)
        } else {
            CodecError::BadLength(len, MAX_STARTUP)
        });
    }
    if buf.len() < len {
        return Ok(None);
    }
    let raw = buf.split_to(len).freeze();
    let code = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
    Ok(Some(match code {
        SSL_REQUEST => Startup::SslRequest,
        GSSENC_REQUEST => Startup::GssEncRequest,
        CANCEL_REQUEST => Startup::Cancel(raw),
        PROTOCOL_V3 => {
            let params = parse_params(&raw[8..])?;
            Startup::Startup { raw, params }
        }
        v => return Err(CodecError::Protocol((v >> 16) as u16, v as u16)),
    }))
}

fn parse_params(mut body: &[u8]) -> Result<Vec<(String, String)>, CodecError> {
    let mut params = Vec::new();
    loop {
        let key = cstr(&mut body).ok_or(CodecError::Malformed(
            "startup",
            "unterminated parameter name",
        ))?;
        if key.is_empty() {
            return Ok(params);
        }
        let value = cstr(&mut body).ok_or(CodecError::Malformed(
            "startup",
            "unterminated parameter value",
        ))?;
        params.push((key.to_owned(), value.to_owned()));
    }
}

/// One tagged message: its original bytes (tag, length, body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub raw: Bytes,
}

impl Message {
    pub fn tag(&self) -> u8 {
        self.raw[0]
    }

    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }
}

/// Splits one whole tagged message off `buf`, or `Ok(None)` if it is not all
/// there yet. `max` bounds the length a peer may announce, so a bogus length
/// cannot make us buffer gigabytes.
pub fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<Message>, CodecError> {
    let Some(len) = peek_u32(buf, 1) else {
        return Ok(None);
    };
    let len = len as usize;
    if !(4..=max).contains(&len) {
        return Err(CodecError::BadLength(len, max));
    }
    if buf.len() < len + 1 {
        buf.reserve(len + 1 - buf.len());
        return Ok(None);
    }
    Ok(Some(Message {
        raw: buf.split_to(len + 1).freeze(),
    }))
}

fn peek_u32(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Reads a NUL-terminated string and advances past it.
fn cstr<'a>(body: &mut &'a [u8]) -> Option<&'a str> {
    let end = body.iter().position(|&b| b == 0)?;
    let s = std::str::from_utf8(&body[..end]).ok()?;
    *body = &body[end + 1..];
    Some(s)
}

fn frame(tag: u8, body: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_u8(tag);
    out.put_u32(0);
    body(&mut out);
    let len = (out.len() - 1) as u32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    out.freeze()
}

/// Query ('Q'): the SQL text.
pub fn query_text(msg: &Message) -> Result<&str, CodecError> {
    let mut body = msg.body();
    cstr(&mut body).ok_or(CodecError::Malformed(
        "Query",
        "text is not a NUL-terminated UTF-8 string",
    ))
}

/// Parse ('P'): statement name and SQL text.
pub fn parse_message(msg: &Message) -> Result<(&str, &str), CodecError> {
    let mut body = msg.body();
    let name = cstr(&mut body).ok_or(CodecError::Malformed("Parse", "bad statement name"))?;
    let query = cstr(&mut body).ok_or(CodecError::Malformed("Parse", "bad query text"))?;
    Ok((name, query))
}

/// Bind ('B'): portal and statement names.
pub fn bind_names(msg: &Message) -> Result<(&str, &str), CodecError> {
    let mut body = msg.body();
    let portal = cstr(&mut body).ok_or(CodecError::Malformed("Bind", "bad portal name"))?;
    let stmt = cstr(&mut body).ok_or(CodecError::Malformed("Bind", "bad statement name"))?;
    Ok((portal, stmt))
}

/// Bind ('B'): the result-column format codes (empty: all text; one: all
/// columns; else one per column).
pub fn bind_result_formats(msg: &Message) -> Result<Vec<i16>, CodecError> {
    const E: CodecError = CodecError::Malformed("Bind", "truncated");
    let mut body = msg.body();
    cstr(&mut body).ok_or(E)?;
    cstr(&mut body).ok_or(E)?;
    let take_i16 = |b: &mut &[u8]| -> Result<i16, CodecError> {
        let v = b.get(..2).ok_or(E)?;
        let n = i16::from_be_bytes([v[0], v[1]]);
        *b = &b[2..];
        Ok(n)
    };
    let n_param_formats = take_i16(&mut body)?.max(0) as usize;
    body = body.get(n_param_formats * 2..).ok_or(E)?;
    let n_params = take_i16(&mut body)?.max(0);
    for _ in 0..n_params {
        let len = body.get(..4).ok_or(E)?;
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        body = &body[4..];
        if len > 0 {
            body = body.get(len as usize..).ok_or(E)?;
        }
    }
    let n = take_i16(&mut body)?.max(0);
    (0..n).map(|_| take_i16(&mut body)).collect()
}

/// Describe ('D') or Close ('C') from the client: kind ('S' or 'P') and name.
pub fn target_name(msg: &Message) -> Result<(u8, &str), CodecError> {
    let mut body = msg.body();
    let kind = *body
        .first()
        .ok_or(CodecError::Malformed("Describe/Close", "empty"))?;
    body = &body[1..];
    let name = cstr(&mut body).ok_or(CodecError::Malformed("Describe/Close", "bad name"))?;
    Ok((kind, name))
}

/// Execute ('E') from the client: portal name.
pub fn execute_portal(msg: &Message) -> Result<&str, CodecError> {
    let mut body = msg.body();
    cstr(&mut body).ok_or(CodecError::Malformed("Execute", "bad portal name"))
}

/// A RowDescription field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub table_oid: u32,
    pub type_oid: u32,
    /// 0 text, 1 binary.
    pub format: i16,
}

pub fn row_description(msg: &Message) -> Result<Vec<Column>, CodecError> {
    let mut body = msg.body();
    if body.len() < 2 {
        return Err(CodecError::Malformed("RowDescription", "truncated"));
    }
    let n = body.get_i16();
    let mut cols = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let name = cstr(&mut body)
            .ok_or(CodecError::Malformed("RowDescription", "bad column name"))?
            .to_owned();
        if body.len() < 18 {
            return Err(CodecError::Malformed("RowDescription", "truncated field"));
        }
        let table_oid = body.get_u32();
        let _attnum = body.get_i16();
        let type_oid = body.get_u32();
        let _typlen = body.get_i16();
        let _typmod = body.get_i32();
        let format = body.get_i16();
        cols.push(Column {
            name,
            table_oid,
            type_oid,
            format,
        });
    }
    Ok(cols)
}

/// DataRow values as byte ranges into the message (None for NULL), so a
/// caller can look at each value without copying.
pub fn data_row(msg: &Message) -> Result<Vec<Option<std::ops::Range<usize>>>, CodecError> {
    let body = msg.body();
    if body.len() < 2 {
        return Err(CodecError::Malformed("DataRow", "truncated"));
    }
    let n = i16::from_be_bytes([body[0], body[1]]);
    let mut at = 2usize;
    let mut values = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let len = body
            .get(at..at + 4)
            .ok_or(CodecError::Malformed("DataRow", "truncated length"))?;
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        at += 4;
        if len < 0 {
            values.push(None);
            continue;
        }
        let end = at + len as usize;
        if end > body.len() {
            return Err(CodecError::Malformed(
                "DataRow",
                "value runs past the message",
            ));
        }
        values.push(Some(5 + at..5 + end));
        at = end;
    }
    Ok(values)
}

/// A DataRow from values (None = NULL), lengths recomputed.
pub fn build_data_row<'a>(values: impl ExactSizeIterator<Item = Option<&'a [u8]>>) -> Bytes {
    let n = values.len() as i16;
    frame(tag::DATA_ROW, |out| {
        out.put_i16(n);
        for v in values {
            match v {
                Some(v) => {
                    out.put_i32(v.len() as i32);
                    out.put_slice(v);
                }
                None => out.put_i32(-1),
            }
        }
    })
}

/// A message with this tag and body.
pub fn build(tag: u8, body: &[u8]) -> Bytes {
    frame(tag, |out| out.put_slice(body))
}

/// ErrorResponse with severity ERROR.
pub fn error_response(sqlstate: &str, message: &str) -> Bytes {
    frame(tag::ERROR_RESPONSE, |out| {
        for (field, value) in [
            (b'S', "ERROR"),
            (b'V', "ERROR"),
            (b'C', sqlstate),
            (b'M', message),
        ] {
            out.put_u8(field);
            out.put_slice(value.replace('\0', " ").as_bytes());
            out.put_u8(0);
        }
        out.put_u8(0);
    })
}

/// An ErrorResponse's SQLSTATE and message, for logs and tests.
pub fn error_fields(msg: &Message) -> (String, String) {
    let mut body = msg.body();
    let (mut code, mut text) = (String::new(), String::new());
    while let Some(&field) = body.first() {
        if field == 0 {
            break;
        }
        body = &body[1..];
        let Some(value) = cstr(&mut body) else { break };
        match field {
            b'C' => code = value.to_owned(),
            b'M' => text = value.to_owned(),
            _ => {}
        }
    }
    (code, text)
}

pub fn sync() -> Bytes {
    frame(tag::SYNC, |_| {})
}

pub fn ready_for_query_status(msg: &Message) -> u8 {
    msg.body().first().copied().unwrap_or(b'I')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup_bytes(params: &[(&str, &str)]) -> BytesMut {
        let mut body = BytesMut::new();
        body.put_u32(PROTOCOL_V3);
        for (k, v) in params {
            body.put_slice(k.as_bytes());
            body.put_u8(0);
            body.put_slice(v.as_bytes());
            body.put_u8(0);
        }
        body.put_u8(0);
        let mut out = BytesMut::new();
        out.put_u32(body.len() as u32 + 4);
        out.put_slice(&body);
        out
    }

    #[test]
    fn startup_round_trip_and_partial() {
        let full = startup_bytes(&[("user", "agent"), ("database", "app")]);
        let mut partial = BytesMut::from(&full[..full.len() - 1]);
        assert_eq!(
            decode_startup(&mut partial),
            Ok(None),
            "incomplete is not an error"
        );
        let mut buf = full.clone();
        match decode_startup(&mut buf) {
            Ok(Some(Startup::Startup { raw, params })) => {
                assert_eq!(&raw[..], &full[..], "original bytes kept");
                assert_eq!(
                    params,
                    vec![
                        ("user".into(), "agent".into()),
                        ("database".into(), "app".into())
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn ssl_and_cancel_requests() {
        let mut buf = BytesMut::new();
        buf.put_u32(8);
        buf.put_u32(SSL_REQUEST);
        assert_eq!(decode_startup(&mut buf), Ok(Some(Startup::SslRequest)));
        let mut buf = BytesMut::new();
        buf.put_u32(16);
        buf.put_u32(CANCEL_REQUEST);
        buf.put_u32(42);
        buf.put_u32(7);
        assert!(
            matches!(decode_startup(&mut buf), Ok(Some(Startup::Cancel(raw))) if raw.len() == 16)
        );
    }

    #[test]
    fn absurd_lengths_are_errors() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0, 3, 0, 0][..]);
        assert!(matches!(
            decode_startup(&mut buf),
            Err(CodecError::StartupTooLong(_))
        ));
        let mut buf = BytesMut::from(&[b'Q', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            decode(&mut buf, 1 << 20),
            Err(CodecError::BadLength(..))
        ));
        let mut buf = BytesMut::from(&[b'Q', 0, 0, 0, 2][..]);
        assert!(matches!(
            decode(&mut buf, 1 << 20),
            Err(CodecError::BadLength(2, _))
        ));
        let mut buf = BytesMut::from(&[0, 0, 0, 8, 0, 9, 0, 0][..]);
        assert!(matches!(
            decode_startup(&mut buf),
            Err(CodecError::Protocol(9, 0))
        ));
    }

    #[test]
    fn data_row_round_trip() {
        let row =
            build_data_row([Some(&b"alice@example.com"[..]), None, Some(&b""[..])].into_iter());
        let msg = decode(&mut BytesMut::from(&row[..]), 1 << 20)
            .expect("valid")
            .expect("whole");
        let values = data_row(&msg).expect("parse");
        assert_eq!(values.len(), 3);
        assert_eq!(
            &msg.raw[values[0].clone().expect("value")],
            b"alice@example.com"
        );
        assert!(values[1].is_none());
        assert_eq!(values[2].clone().map(|r| r.len()), Some(0));
        let truncated = Message {
            raw: row.slice(..row.len() - 3),
        };
        assert!(data_row(&truncated).is_err());
    }

    #[test]
    fn error_response_fields() {
        let e = error_response("42501", "agentguard: denied");
        let msg = decode(&mut BytesMut::from(&e[..]), 1 << 20)
            .expect("valid")
            .expect("whole");
        assert_eq!(
            error_fields(&msg),
            ("42501".into(), "agentguard: denied".into())
        );
    }

    #[test]
    fn query_and_parse_text() {
        let q = frame(tag::QUERY, |o| o.put_slice(b"SELECT 1\0"));
        let msg = decode(&mut BytesMut::from(&q[..]), 1 << 20)
            .expect("ok")
            .expect("whole");
        assert_eq!(query_text(&msg), Ok("SELECT 1"));
        let p = frame(tag::PARSE, |o| o.put_slice(b"s1\0DELETE FROM t\0\0\0"));
        let msg = decode(&mut BytesMut::from(&p[..]), 1 << 20)
            .expect("ok")
            .expect("whole");
        assert_eq!(parse_message(&msg), Ok(("s1", "DELETE FROM t")));
        let bad = frame(tag::QUERY, |o| o.put_slice(b"no terminator"));
        let msg = decode(&mut BytesMut::from(&bad[..]), 1 << 20)
            .expect("ok")
            .expect("whole");
        assert!(query_text(&msg).is_err());
    }
}
