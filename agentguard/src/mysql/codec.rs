//! MySQL / MariaDB client/server packets, both ways, in two phases: is a
//! whole logical packet buffered (3-byte length + sequence id, payloads of
//! 16 MiB − 1 continued in the next packet)? then split it off with its
//! original bytes, which are forwarded untouched unless something must
//! change. Hand-written rather than `mysql_common`: that crate parses
//! into owned client-side structures and re-serialises, while a proxy
//! needs the original bytes, byte ranges of row values for masking, and
//! its own limits; the framing itself is a few lines.

use std::ops::Range;

use bytes::{BufMut as _, Bytes, BytesMut};

/// Payload of one physical packet at most; a payload this long continues
/// in the next packet.
pub const MAX_PART: usize = 0xFF_FFFF;
/// Longest logical packet either side may send (MariaDB's own
/// `max_allowed_packet` ceiling is 1 GiB; rows and queries are far smaller).
pub const MAX_PACKET: usize = 256 << 20;

pub mod cap {
    pub const LONG_PASSWORD: u32 = 1;
    pub const CONNECT_WITH_DB: u32 = 1 << 3;
    pub const COMPRESS: u32 = 1 << 5;
    pub const LOCAL_FILES: u32 = 1 << 7;
    pub const PROTOCOL_41: u32 = 1 << 9;
    pub const SSL: u32 = 1 << 11;
    pub const SECURE_CONNECTION: u32 = 1 << 15;
    pub const MULTI_STATEMENTS: u32 = 1 << 16;
    pub const MULTI_RESULTS: u32 = 1 << 17;
    pub const PLUGIN_AUTH: u32 = 1 << 19;
    pub const CONNECT_ATTRS: u32 = 1 << 20;
    pub const PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 1 << 21;
    pub const DEPRECATE_EOF: u32 = 1 << 24;
    pub const ZSTD_COMPRESSION: u32 = 1 << 26;
    pub const QUERY_ATTRIBUTES: u32 = 1 << 27;
    /// What the guard takes out of both ends' capabilities: compression
    /// (the traffic must stay readable), TLS (each hop's TLS is the
    /// guard's own: offered to the agent only when the agentguard CA can
    /// terminate it, towards the server as the target's `tls` says) and
    /// query attributes (a COM_QUERY stays plain SQL text).
    pub const STRIPPED: u32 = COMPRESS | SSL | ZSTD_COMPRESSION | QUERY_ATTRIBUTES;
}

/// Server status flags (OK and EOF packets).
pub mod status {
    pub const IN_TRANS: u16 = 1;
    pub const MORE_RESULTS_EXISTS: u16 = 1 << 3;
    pub const CURSOR_EXISTS: u16 = 1 << 6;
}

/// Command bytes (the first byte of a client packet in the command phase).
pub mod com {
    pub const QUIT: u8 = 0x01;
    pub const INIT_DB: u8 = 0x02;
    pub const QUERY: u8 = 0x03;
    pub const FIELD_LIST: u8 = 0x04;
    pub const STATISTICS: u8 = 0x08;
    pub const PROCESS_KILL: u8 = 0x0c;
    pub const PING: u8 = 0x0e;
    pub const CHANGE_USER: u8 = 0x11;
    pub const BINLOG_DUMP: u8 = 0x12;
    pub const REGISTER_SLAVE: u8 = 0x15;
    pub const STMT_PREPARE: u8 = 0x16;
    pub const STMT_EXECUTE: u8 = 0x17;
    pub const STMT_SEND_LONG_DATA: u8 = 0x18;
    pub const STMT_CLOSE: u8 = 0x19;
    pub const STMT_RESET: u8 = 0x1a;
    pub const SET_OPTION: u8 = 0x1b;
    pub const STMT_FETCH: u8 = 0x1c;
    pub const BINLOG_DUMP_GTID: u8 = 0x1e;
    pub const RESET_CONNECTION: u8 = 0x1f;
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("packet of {len} bytes is over the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("packet sequence {got} where {want} was due")]
    Sequence { got: u8, want: u8 },
    #[error("empty packet where a command was due")]
    Empty,
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("the client does not speak protocol 4.1 (CLIENT_PROTOCOL_41)")]
    OldProtocol,
}

/// One logical packet: its first sequence id, its payload (joined when it
/// was split) and its bytes as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub seq: u8,
    /// The sequence id of its last physical packet.
    pub last_seq: u8,
    pub payload: Bytes,
    pub raw: Bytes,
}

impl Packet {
    /// The sequence id the next packet of the exchange carries.
    pub fn next_seq(&self) -> u8 {
        self.last_seq.wrapping_add(1)
    }

    pub fn first(&self) -> Option<u8> {
        self.payload.first().copied()
    }

    pub fn is_ok(&self) -> bool {
        self.first() == Some(0x00)
    }

    pub fn is_err(&self) -> bool {
        self.first() == Some(0xff)
    }

    /// An EOF packet, or an OK packet in EOF's place (CLIENT_DEPRECATE_EOF):
    /// 0xFE and shorter than any row that starts with 0xFE could be.
    pub fn is_eof(&self) -> bool {
        self.first() == Some(0xfe) && self.payload.len() < MAX_PART
    }
}

/// Splits one whole logical packet off `buf`; `Ok(None)`: not all of it
/// is buffered yet.
pub fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<Packet>, CodecError> {
    let mut pos = 0;
    let mut total = 0usize;
    let mut parts = 0usize;
    let mut last_seq = 0u8;
    loop {
        let Some(header) = buf.get(pos..pos + 4) else {
            return Ok(None);
        };
        let len =
            usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
        total += len;
        if total > max {
            return Err(CodecError::TooLong { len: total, max });
        }
        if parts > 0 && header[3] != last_seq.wrapping_add(1) {
            return Err(CodecError::Sequence {
                got: header[3],
                want: last_seq.wrapping_add(1),
            });
        }
        last_seq = header[3];
        parts += 1;
        pos += 4 + len;
        if buf.len() < pos {
            return Ok(None);
        }
        if len < MAX_PART {
            break;
        }
    }
    let raw = buf.split_to(pos).freeze();
    let seq = raw[3];
    let payload = if parts == 1 {
        raw.slice(4..)
    } else {
        let mut joined = BytesMut::with_capacity(total);
        let mut at = 0;
        while at < raw.len() {
            let len = usize::from(raw[at])
                | usize::from(raw[at + 1]) << 8
                | usize::from(raw[at + 2]) << 16;
            joined.extend_from_slice(&raw[at + 4..at + 4 + len]);
            at += 4 + len;
        }
        joined.freeze()
    };
    Ok(Some(Packet {
        seq,
        last_seq,
        payload,
        raw,
    }))
}

/// Frames `payload` starting at sequence id `seq`, split in parts of
/// [`MAX_PART`] (a payload that is a multiple of it ends with an empty
/// part); returns the sequence id after the last part.
pub fn encode(out: &mut BytesMut, mut seq: u8, payload: &[u8]) -> u8 {
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_PART);
        let len = u32::try_from(n).unwrap_or(0).to_le_bytes();
        out.extend_from_slice(&len[..3]);
        out.put_u8(seq);
        out.extend_from_slice(&rest[..n]);
        seq = seq.wrapping_add(1);
        rest = &rest[n..];
        if n < MAX_PART {
            return seq;
        }
    }
}

/// An ERR packet's payload (protocol 4.1: with SQLSTATE).
pub fn err_payload(code: u16, sqlstate: &str, message: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(9 + message.len());
    p.push(0xff);
    p.extend_from_slice(&code.to_le_bytes());
    p.push(b'#');
    let mut state = [b'H', b'Y', b'0', b'0', b'0'];
    for (d, s) in state.iter_mut().zip(sqlstate.bytes()) {
        *d = s;
    }
    p.extend_from_slice(&state);
    p.extend_from_slice(message.as_bytes());
    p
}

/// A whole ERR packet with sequence id `seq`.
pub fn err_packet(seq: u8, code: u16, sqlstate: &str, message: &str) -> Bytes {
    let mut out = BytesMut::new();
    encode(&mut out, seq, &err_payload(code, sqlstate, message));
    out.freeze()
}

/// An ERR packet's code, SQLSTATE and message.
pub fn parse_err(payload: &[u8]) -> Option<(u16, String, String)> {
    let code = u16::from_le_bytes([*payload.get(1)?, *payload.get(2)?]);
    let rest = payload.get(3..)?;
    let (state, message) = match rest.first() {
        Some(b'#') if rest.len() >= 6 => (&rest[1..6], &rest[6..]),
        _ => (&b""[..], rest),
    };
    Some((
        code,
        String::from_utf8_lossy(state).into_owned(),
        String::from_utf8_lossy(message).into_owned(),
    ))
}

/// A length-encoded integer at `*pos`; `Some(None)`: the NULL marker 0xFB.
pub fn lenenc_int(buf: &[u8], pos: &mut usize) -> Option<Option<u64>> {
    let first = *buf.get(*pos)?;
    let (value, width) = match first {
        0xfb => {
            *pos += 1;
            return Some(None);
        }
        0xfc => (le(buf.get(*pos + 1..*pos + 3)?), 3),
        0xfd => (le(buf.get(*pos + 1..*pos + 4)?), 4),
        0xfe => (le(buf.get(*pos + 1..*pos + 9)?), 9),
        0xff => return None,
        n => (u64::from(n), 1),
    };
    *pos += width;
    Some(Some(value))
}

fn le(b: &[u8]) -> u64 {
    b.iter()
        .rev()
        .fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
}

/// A length-encoded string's byte range; `Some(None)`: NULL.
pub fn lenenc_str(buf: &[u8], pos: &mut usize) -> Option<Option<Range<usize>>> {
    let Some(len) = lenenc_int(buf, pos)? else {
        return Some(None);
    };
    let len = usize::try_from(len).ok()?;
    let start = *pos;
    let end = start.checked_add(len)?;
    if end > buf.len() {
        return None;
    }
    *pos = end;
    Some(Some(start..end))
}

pub fn put_lenenc_int(out: &mut Vec<u8>, n: u64) {
    match n {
        0..=0xfa => out.push(n as u8),
        0xfb..=0xffff => {
            out.push(0xfc);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        0x1_0000..=0xff_ffff => {
            out.push(0xfd);
            out.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xfe);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

pub fn put_lenenc_str(out: &mut Vec<u8>, s: &[u8]) {
    put_lenenc_int(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// A NUL-terminated string at `*pos` (to the end when there is no NUL).
fn nul_str(buf: &[u8], pos: &mut usize) -> Option<Range<usize>> {
    let rest = buf.get(*pos..)?;
    let end = memchr::memchr(0, rest).unwrap_or(rest.len());
    let r = *pos..*pos + end;
    *pos += (end + 1).min(rest.len());
    Some(r)
}

fn text(buf: &[u8], r: Range<usize>) -> String {
    String::from_utf8_lossy(&buf[r]).into_owned()
}

/// The server's greeting (Protocol::HandshakeV10).
#[derive(Debug, Clone)]
pub struct Greeting {
    pub server_version: String,
    /// The capabilities the server offers (before the guard's changes).
    pub capabilities: u32,
    /// The greeting as the client gets it: [`cap::STRIPPED`] and
    /// MariaDB's extended capabilities (progress reports, bulk
    /// operations, cached metadata, all of which change the framing of
    /// replies) taken out.
    pub adjusted: Vec<u8>,
    /// The auth plugin's nonce (both parts, 20 bytes) and the plugin the
    /// server starts with: what the guard logs in with when it holds the
    /// credential.
    pub scramble: Vec<u8>,
    pub plugin: String,
}

/// `offer`: capabilities the client is offered whatever the server said
/// (CLIENT_SSL when the guard terminates the agent's TLS).
pub fn parse_greeting(payload: &[u8], offer: u32) -> Result<Greeting, CodecError> {
    const BAD: CodecError = CodecError::Malformed("server greeting");
    if payload.first() != Some(&10) {
        return Err(CodecError::Malformed("server greeting (not protocol 10)"));
    }
    let mut pos = 1;
    let version = nul_str(payload, &mut pos).ok_or(BAD)?;
    // connection id (4), auth data part 1 (8), filler (1)
    let low = pos + 13;
    let high = low + 5;
    let reserved = high + 3;
    if payload.len() < reserved + 10 {
        return Err(BAD);
    }
    let capabilities = u32::from(u16::from_le_bytes([payload[low], payload[low + 1]]))
        | u32::from(u16::from_le_bytes([payload[high], payload[high + 1]])) << 16;
    let mut adjusted = payload.to_vec();
    let caps = ((capabilities & !cap::STRIPPED) | offer).to_le_bytes();
    adjusted[low..low + 2].copy_from_slice(&caps[..2]);
    adjusted[high..high + 2].copy_from_slice(&caps[2..]);
    // MariaDB: the last 4 reserved bytes are its extended capabilities.
    adjusted[reserved + 6..reserved + 10].fill(0);
    let mut scramble = payload[pos + 4..pos + 12].to_vec();
    let auth_len = usize::from(payload[high + 2]);
    let mut at = reserved + 10;
    let part2 = auth_len.saturating_sub(8).max(13);
    if let Some(p2) = payload.get(at..(at + part2).min(payload.len())) {
        scramble.extend_from_slice(p2.strip_suffix(&[0]).unwrap_or(p2));
        at += part2;
    }
    let plugin = nul_str(payload, &mut at)
        .map(|r| text(payload, r))
        .unwrap_or_default();
    Ok(Greeting {
        server_version: text(payload, version),
        capabilities,
        adjusted,
        scramble,
        plugin,
    })
}

/// The client's HandshakeResponse41 (or the SSLRequest that starts TLS).
#[derive(Debug, Clone)]
pub struct HandshakeResponse {
    pub capabilities: u32,
    /// The client asked for TLS: this is an SSLRequest.
    pub ssl: bool,
    pub user: String,
    pub database: Option<String>,
    /// The response as the server gets it (capabilities the guard took
    /// out of the greeting cleared here too).
    pub adjusted: Vec<u8>,
    /// The connection attributes, as sent (CLIENT_CONNECT_ATTRS).
    pub attrs: Vec<u8>,
}

impl HandshakeResponse {
    /// The response with CLIENT_SSL set (the guard's own TLS to the
    /// server); `ssl_request`: only its first 32 bytes, the SSLRequest.
    pub fn with_ssl(&self, ssl_request: bool) -> Vec<u8> {
        let caps = (self.capabilities & !cap::STRIPPED) | cap::SSL;
        let mut p = self.adjusted.clone();
        p[..4].copy_from_slice(&caps.to_le_bytes());
        if ssl_request {
            p.truncate(32);
        }
        p
    }

    /// The response logging in as `user` with `auth` for `plugin` (the
    /// guard's own login with a stored credential); `ssl`: over the
    /// guard's TLS to the server.
    pub fn with_login(&self, user: &str, auth: &[u8], plugin: &str, ssl: bool) -> Vec<u8> {
        let mut caps =
            (self.capabilities & !cap::STRIPPED) | cap::PLUGIN_AUTH | cap::SECURE_CONNECTION;
        if ssl {
            caps |= cap::SSL;
        }
        let mut p = self.adjusted[..32].to_vec();
        p[..4].copy_from_slice(&caps.to_le_bytes());
        p.extend_from_slice(user.as_bytes());
        p.push(0);
        if caps & cap::PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            put_lenenc_str(&mut p, auth);
        } else {
            // Scrambles are 20 or 32 bytes: a one-byte length holds them.
            p.push(u8::try_from(auth.len()).unwrap_or(u8::MAX));
            p.extend_from_slice(auth);
        }
        if caps & cap::CONNECT_WITH_DB != 0 {
            p.extend_from_slice(self.database.as_deref().unwrap_or("").as_bytes());
            p.push(0);
        }
        p.extend_from_slice(plugin.as_bytes());
        p.push(0);
        if caps & cap::CONNECT_ATTRS != 0 {
            p.extend_from_slice(&self.attrs);
        }
        p
    }
}

pub fn parse_handshake_response(payload: &[u8]) -> Result<HandshakeResponse, CodecError> {
    const BAD: CodecError = CodecError::Malformed("handshake response");
    let caps = payload.get(..4).ok_or(BAD)?;
    let capabilities = u32::from_le_bytes([caps[0], caps[1], caps[2], caps[3]]);
    if capabilities & cap::PROTOCOL_41 == 0 {
        return Err(CodecError::OldProtocol);
    }
    if payload.len() < 32 {
        return Err(BAD);
    }
    let ssl = capabilities & cap::SSL != 0;
    let mut adjusted = payload.to_vec();
    adjusted[..4].copy_from_slice(&(capabilities & !cap::STRIPPED).to_le_bytes());
    adjusted[28..32].fill(0);
    if ssl && payload.len() == 32 {
        return Ok(HandshakeResponse {
            capabilities,
            ssl,
            user: String::new(),
            database: None,
            adjusted,
            attrs: Vec::new(),
        });
    }
    let mut pos = 32;
    let user = nul_str(payload, &mut pos).ok_or(BAD)?;
    if capabilities & cap::PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
        lenenc_str(payload, &mut pos).ok_or(BAD)?;
    } else if capabilities & cap::SECURE_CONNECTION != 0 {
        let n = usize::from(*payload.get(pos).ok_or(BAD)?);
        pos += 1 + n;
    } else {
        nul_str(payload, &mut pos).ok_or(BAD)?;
    }
    let database = if capabilities & cap::CONNECT_WITH_DB != 0 && pos < payload.len() {
        nul_str(payload, &mut pos).map(|r| text(payload, r))
    } else {
        None
    };
    if capabilities & cap::PLUGIN_AUTH != 0 && pos < payload.len() {
        nul_str(payload, &mut pos);
    }
    let attrs = if capabilities & cap::CONNECT_ATTRS != 0 {
        payload.get(pos..).unwrap_or_default().to_vec()
    } else {
        Vec::new()
    };
    Ok(HandshakeResponse {
        capabilities,
        ssl,
        user: text(payload, user),
        database: database.filter(|d| !d.is_empty()),
        adjusted,
        attrs,
    })
}

/// COM_CHANGE_USER's user and database.
pub fn parse_change_user(payload: &[u8], capabilities: u32) -> Option<(String, Option<String>)> {
    let mut pos = 1;
    let user = nul_str(payload, &mut pos)?;
    if capabilities & cap::SECURE_CONNECTION != 0 {
        let n = usize::from(*payload.get(pos)?);
        pos += 1 + n;
    } else {
        nul_str(payload, &mut pos)?;
    }
    let db = nul_str(payload, &mut pos).map(|r| text(payload, r));
    Some((text(payload, user), db.filter(|d| !d.is_empty())))
}

/// An OK packet's affected rows and status flags.
pub fn parse_ok(payload: &[u8]) -> Option<(u64, u16)> {
    let mut pos = 1;
    let affected = lenenc_int(payload, &mut pos)??;
    lenenc_int(payload, &mut pos)??;
    let status = u16::from_le_bytes([*payload.get(pos)?, *payload.get(pos + 1)?]);
    Some((affected, status))
}

/// Status flags of an EOF packet, or of an OK packet in EOF's place.
pub fn eof_status(payload: &[u8], deprecate_eof: bool) -> u16 {
    if deprecate_eof || payload.len() > 5 {
        return parse_ok(payload).map_or(0, |(_, s)| s);
    }
    match payload.get(3..5) {
        Some(s) => u16::from_le_bytes([s[0], s[1]]),
        None => 0,
    }
}

/// A column definition (Protocol::ColumnDefinition41).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Column {
    pub table: String,
    pub org_table: String,
    pub name: String,
    pub org_name: String,
    pub column_type: u8,
}

pub fn parse_column(payload: &[u8]) -> Option<Column> {
    let mut pos = 0;
    let mut field =
        || lenenc_str(payload, &mut pos).map(|r| r.map(|r| text(payload, r)).unwrap_or_default());
    let _catalog = field()?;
    let _schema = field()?;
    let table = field()?;
    let org_table = field()?;
    let name = field()?;
    let org_name = field()?;
    // length of fixed fields (0x0c), charset (2), column length (4), type
    let column_type = *payload.get(pos + 1 + 2 + 4)?;
    Some(Column {
        table,
        org_table,
        name,
        org_name,
        column_type,
    })
}

/// The byte ranges of a text-protocol row's values (`None`: NULL).
pub fn text_row(payload: &[u8], columns: usize) -> Option<Vec<Option<Range<usize>>>> {
    let mut pos = 0;
    let mut values = Vec::with_capacity(columns);
    while pos < payload.len() {
        values.push(lenenc_str(payload, &mut pos)?);
    }
    (values.len() == columns).then_some(values)
}

pub fn build_text_row<'a>(values: impl Iterator<Item = Option<&'a [u8]>>) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        match v {
            Some(v) => put_lenenc_str(&mut out, v),
            None => out.push(0xfb),
        }
    }
    out
}

/// A binary-protocol value: a length-encoded string (the text-like
/// types), or fixed bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BinValue {
    Null,
    Str(Range<usize>),
    Fixed(Range<usize>),
}

/// The values of a binary-protocol row (COM_STMT_EXECUTE / FETCH).
pub fn binary_row(payload: &[u8], types: &[u8]) -> Option<Vec<BinValue>> {
    if payload.first() != Some(&0) {
        return None;
    }
    let bitmap_len = (types.len() + 7 + 2) / 8;
    let bitmap = payload.get(1..1 + bitmap_len)?;
    let mut pos = 1 + bitmap_len;
    let mut values = Vec::with_capacity(types.len());
    for (i, ty) in types.iter().enumerate() {
        let bit = i + 2;
        if bitmap[bit / 8] & (1 << (bit % 8)) != 0 {
            values.push(BinValue::Null);
            continue;
        }
        values.push(bin_value(payload, &mut pos, *ty)?);
    }
    (pos == payload.len()).then_some(values)
}

/// One binary-protocol value of type `ty` at `*pos`.
fn bin_value(payload: &[u8], pos: &mut usize, ty: u8) -> Option<BinValue> {
    let fixed = match ty {
        0x01 => Some(1),               // TINY
        0x02 | 0x0d => Some(2),        // SHORT, YEAR
        0x03 | 0x09 | 0x04 => Some(4), // LONG, INT24, FLOAT
        0x05 | 0x08 => Some(8),        // DOUBLE, LONGLONG
        0x07 | 0x0a | 0x0b | 0x0c => {
            // TIMESTAMP, DATE, TIME, DATETIME: a length byte, then it.
            Some(1 + usize::from(*payload.get(*pos)?))
        }
        0x06 => Some(0), // NULL type
        _ => None,
    };
    match fixed {
        Some(n) => {
            let end = pos.checked_add(n)?;
            if end > payload.len() {
                return None;
            }
            let r = *pos..end;
            *pos = end;
            Some(BinValue::Fixed(r))
        }
        None => lenenc_str(payload, pos)?.map(BinValue::Str),
    }
}

/// A fixed-width binary value as text (numbers; other types in hex).
pub fn render_fixed(b: &[u8], ty: u8) -> String {
    match (ty, b.len()) {
        (0x04, 4) => f32::from_le_bytes([b[0], b[1], b[2], b[3]]).to_string(),
        (0x05, 8) => {
            f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]).to_string()
        }
        (0x01, 1) => (b[0] as i8).to_string(),
        (0x02 | 0x0d, 2) => i16::from_le_bytes([b[0], b[1]]).to_string(),
        (0x03 | 0x09, 4) => i32::from_le_bytes([b[0], b[1], b[2], b[3]]).to_string(),
        (0x08, 8) => {
            i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]).to_string()
        }
        _ => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}

/// COM_STMT_EXECUTE's parameter values as text (`None`: NULL), for
/// policy. `types`: the types bound last, replaced when this execute binds
/// new ones. `None` when the values cannot be read (sent as long data).
pub fn execute_params(
    payload: &[u8],
    count: usize,
    types: &mut Vec<u8>,
) -> Option<Vec<Option<String>>> {
    if count == 0 {
        return Some(Vec::new());
    }
    let bitmap_len = count.div_ceil(8);
    let bitmap = payload.get(10..10 + bitmap_len)?;
    let mut pos = 10 + bitmap_len;
    if *payload.get(pos)? == 1 {
        let raw = payload.get(pos + 1..pos + 1 + 2 * count)?;
        *types = raw.chunks(2).map(|t| t[0]).collect();
        pos += 1 + 2 * count;
    } else {
        pos += 1;
    }
    if types.len() != count {
        return None;
    }
    let mut values = Vec::with_capacity(count);
    for (i, ty) in types.iter().enumerate() {
        if bitmap[i / 8] & (1 << (i % 8)) != 0 {
            values.push(None);
            continue;
        }
        values.push(Some(match bin_value(payload, &mut pos, *ty)? {
            BinValue::Str(r) => String::from_utf8_lossy(&payload[r]).into_owned(),
            BinValue::Fixed(r) => render_fixed(&payload[r], *ty),
            BinValue::Null => return None,
        }));
    }
    Some(values)
}

/// A binary row rebuilt with some values replaced (`None`: NULL).
pub fn build_binary_row(
    payload: &[u8],
    values: &[BinValue],
    replaced: &[Option<Option<Vec<u8>>>],
) -> Vec<u8> {
    let bitmap_len = (values.len() + 7 + 2) / 8;
    let mut out = Vec::with_capacity(payload.len());
    out.push(0);
    let start = out.len();
    out.extend_from_slice(&payload[1..1 + bitmap_len]);
    for (i, (v, r)) in values.iter().zip(replaced).enumerate() {
        match (r, v) {
            (Some(None), _) => {
                let bit = i + 2;
                out[start + bit / 8] |= 1 << (bit % 8);
            }
            (Some(Some(new)), _) => put_lenenc_str(&mut out, new),
            (None, BinValue::Str(r)) => put_lenenc_str(&mut out, &payload[r.clone()]),
            (None, BinValue::Fixed(r)) => out.extend_from_slice(&payload[r.clone()]),
            (None, BinValue::Null) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(payload: &[u8]) -> Packet {
        let mut out = BytesMut::new();
        let next = encode(&mut out, 3, payload);
        let raw = out.clone().freeze();
        let p = decode(&mut out, MAX_PACKET)
            .expect("decodes")
            .expect("whole");
        assert!(out.is_empty());
        assert_eq!(p.payload, payload);
        assert_eq!(p.raw, raw);
        assert_eq!(p.seq, 3);
        assert_eq!(p.next_seq(), next);
        p
    }

    #[test]
    fn small_and_split_packets_round_trip() {
        roundtrip(b"\x03SELECT 1");
        roundtrip(b"");
        let big = vec![7u8; MAX_PART + 10];
        assert_eq!(roundtrip(&big).last_seq, 4);
        let exact = vec![1u8; MAX_PART];
        // A payload of exactly 16 MiB - 1 is followed by an empty part.
        assert_eq!(roundtrip(&exact).last_seq, 4);
    }

    #[test]
    fn partial_input_waits() {
        let mut out = BytesMut::new();
        encode(&mut out, 0, &vec![1u8; MAX_PART + 5]);
        for cut in [0, 3, 4, 100, MAX_PART + 4, MAX_PART + 8, out.len() - 1] {
            let mut part = BytesMut::from(&out[..cut]);
            assert_eq!(decode(&mut part, MAX_PACKET), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn limits_and_sequence_are_checked() {
        let mut b = BytesMut::from(&[0xff, 0xff, 0xff, 0][..]);
        assert!(matches!(
            decode(&mut b, 1000),
            Err(CodecError::TooLong { .. })
        ));
        let mut out = BytesMut::new();
        encode(&mut out, 0, &vec![1u8; MAX_PART + 1]);
        out[MAX_PART + 4 + 3] = 9;
        assert_eq!(
            decode(&mut out, MAX_PACKET),
            Err(CodecError::Sequence { got: 9, want: 1 })
        );
    }

    #[test]
    fn lenenc_round_trip() {
        for n in [
            0u64,
            250,
            251,
            0xffff,
            0x10000,
            0xff_ffff,
            0x100_0000,
            u64::MAX,
        ] {
            let mut v = Vec::new();
            put_lenenc_int(&mut v, n);
            let mut pos = 0;
            assert_eq!(lenenc_int(&v, &mut pos), Some(Some(n)));
            assert_eq!(pos, v.len());
        }
        let mut pos = 0;
        assert_eq!(lenenc_int(&[0xfb], &mut pos), Some(None));
        assert_eq!(lenenc_str(&[5, b'a'], &mut 0), None);
    }

    #[test]
    fn text_rows_rebuild() {
        let row = build_text_row([Some(&b"a@b.c"[..]), None, Some(&b""[..])].into_iter());
        let values = text_row(&row, 3).expect("row");
        assert_eq!(values[0].clone().map(|r| &row[r]), Some(&b"a@b.c"[..]));
        assert_eq!(values[1], None);
        assert!(text_row(&row, 2).is_none());
    }

    #[test]
    fn binary_rows_rebuild() {
        // Two columns: LONG 7, VAR_STRING "x@y.z"; a third NULL.
        let mut p = vec![0u8, 0b0001_0000];
        p.extend_from_slice(&7u32.to_le_bytes());
        put_lenenc_str(&mut p, b"x@y.z");
        let types = [0x03, 0xfd, 0xfd];
        let values = binary_row(&p, &types).expect("row");
        assert_eq!(values[2], BinValue::Null);
        let out = build_binary_row(&p, &values, &[None, Some(Some(b"[email]".to_vec())), None]);
        let again = binary_row(&out, &types).expect("row");
        let BinValue::Str(r) = &again[1] else {
            panic!("{again:?}")
        };
        assert_eq!(&out[r.clone()], b"[email]");
        let nulled = build_binary_row(&p, &values, &[None, Some(None), None]);
        assert_eq!(binary_row(&nulled, &types).expect("row")[1], BinValue::Null);
    }

    #[test]
    fn execute_params_are_read() {
        let mut p = vec![0x17, 1, 0, 0, 0, 0, 1, 0, 0, 0];
        p.push(0b10); // second parameter NULL
        p.push(1);
        p.extend_from_slice(&[0x08, 0, 0xfd, 0, 0xfd, 0]);
        p.extend_from_slice(&42i64.to_le_bytes());
        put_lenenc_str(&mut p, b"ann");
        let mut types = Vec::new();
        assert_eq!(
            execute_params(&p, 3, &mut types),
            Some(vec![Some("42".into()), None, Some("ann".into())])
        );
        // Types bound before are kept when none are sent.
        let mut again = p[..11].to_vec();
        again.push(0);
        again.extend_from_slice(&7i64.to_le_bytes());
        put_lenenc_str(&mut again, b"bob");
        assert_eq!(
            execute_params(&again, 3, &mut types),
            Some(vec![Some("7".into()), None, Some("bob".into())])
        );
        assert_eq!(execute_params(&p[..12], 3, &mut Vec::new()), None);
    }

    #[test]
    fn err_packet_round_trip() {
        let raw = err_packet(1, 1142, "42000", "agentguard: no");
        let p = decode(&mut BytesMut::from(&raw[..]), MAX_PACKET)
            .expect("ok")
            .expect("whole");
        assert!(p.is_err());
        assert_eq!(
            parse_err(&p.payload),
            Some((1142, "42000".into(), "agentguard: no".into()))
        );
    }
}
