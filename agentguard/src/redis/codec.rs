//! RESP2 and RESP3 framing, both ways, in two phases: is a whole frame
//! buffered? then split it off as its original bytes, with a tree of
//! ranges into them. Nothing is re-encoded unless a mask changes a value
//! ([`splice`]). Hand-written rather than `redis-protocol`: a proxy needs
//! the original bytes and byte ranges of every value, one decoder for both
//! protocol versions on one connection (HELLO switches mid-stream), inline
//! commands, and its own size limits, which that crate's owned frames do
//! not give.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

/// Longest bulk string, as Redis's default `proto-max-bulk-len`.
pub const MAX_BULK: usize = 512 << 20;
/// Longest inline command (Redis: 64 KiB).
pub const MAX_INLINE: usize = 64 << 10;
/// Most elements one aggregate may announce.
pub const MAX_ELEMENTS: usize = 1 << 24;
/// Deepest nesting of aggregates (Redis replies nest a few levels).
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("unknown RESP type byte {0:#04x}")]
    UnknownType(u8),
    #[error("invalid length {0:?}")]
    BadLength(String),
    #[error("{what} of {len} bytes is over the limit of {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("bulk string not followed by CRLF")]
    MissingCrlf,
    #[error("aggregates nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("invalid integer {0:?}")]
    BadInteger(String),
    #[error("invalid boolean")]
    BadBoolean,
    #[error("streamed RESP3 aggregates are not supported")]
    Streamed,
    #[error("a command's arguments must be bulk strings, got type {0:#04x}")]
    NotBulk(u8),
    #[error("unbalanced quotes in inline command")]
    Quotes,
}

/// One decoded value: where it sits in its frame, and what it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The whole element, type byte to final CRLF.
    pub span: Range<usize>,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// `+`: the text.
    Simple(Range<usize>),
    /// `-`: the message.
    Error(Range<usize>),
    Integer(i64),
    /// `$`: the payload.
    Bulk(Range<usize>),
    /// `!`: the message.
    BulkError(Range<usize>),
    /// `=`: the payload after the three-letter format and `:`.
    Verbatim(Range<usize>),
    /// `$-1`, `*-1`, `_`.
    Null,
    Bool(bool),
    /// `,` and `(`: the text.
    Number(Range<usize>),
    Array(Vec<Node>),
    /// `%`: keys and values, alternating.
    Map(Vec<Node>),
    Set(Vec<Node>),
    /// `>`: data the server sends on its own (pub/sub, invalidation).
    Push(Vec<Node>),
    /// `|` attributes (alternating) and the reply they annotate.
    Attribute(Vec<Node>, Box<Node>),
}

impl Node {
    /// The node's bytes as a string, for bulk, simple and verbatim strings.
    pub fn text<'a>(&self, raw: &'a [u8]) -> Option<&'a [u8]> {
        match &self.kind {
            Kind::Simple(r) | Kind::Bulk(r) | Kind::Verbatim(r) => raw.get(r.clone()),
            _ => None,
        }
    }

    /// Elements of an array, set, push or map (flat).
    pub fn elements(&self) -> Option<&[Node]> {
        match &self.kind {
            Kind::Array(v) | Kind::Map(v) | Kind::Set(v) | Kind::Push(v) => Some(v),
            Kind::Attribute(_, inner) => inner.elements(),
            _ => None,
        }
    }
}

/// A whole reply frame as the server sent it.
#[derive(Debug, Clone)]
pub struct Frame {
    pub raw: Bytes,
    pub node: Node,
}

/// A whole command as the client sent it.
#[derive(Debug, Clone)]
pub struct Command {
    pub raw: Bytes,
    /// The command name first; slices of `raw` for multibulk commands.
    pub args: Vec<Bytes>,
    pub inline: bool,
}

/// Where scanning stopped: a complete value, or more bytes needed.
enum Scan {
    Done(Node, usize),
    /// The frame is at least this long: no point scanning again before.
    Need(usize),
}

/// The CRLF-terminated line starting at `pos`: (its end, the CRLF's start).
fn line(buf: &[u8], pos: usize, max: usize) -> Result<Option<(usize, usize)>, CodecError> {
    let rest = buf.get(pos..).unwrap_or_default();
    match memchr::memchr(b'\n', rest) {
        Some(i) if i > 0 && rest[i - 1] == b'\r' => Ok(Some((pos + i + 1, pos + i - 1))),
        Some(_) => Err(CodecError::MissingCrlf),
        None if rest.len() > max => Err(CodecError::TooLong {
            what: "line",
            len: rest.len(),
            max,
        }),
        None => Ok(None),
    }
}

fn parse_int(text: &[u8]) -> Result<i64, CodecError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| CodecError::BadInteger(String::from_utf8_lossy(text).into_owned()))
}

/// A length header's value: `None` for -1 (null), an error for `?`
/// (streamed) and anything else out of range.
fn parse_len(text: &[u8], max: usize, what: &'static str) -> Result<Option<usize>, CodecError> {
    if text == b"?" {
        return Err(CodecError::Streamed);
    }
    let n = parse_int(text)
        .map_err(|_| CodecError::BadLength(String::from_utf8_lossy(text).into_owned()))?;
    if n == -1 {
        return Ok(None);
    }
    let n = usize::try_from(n)
        .map_err(|_| CodecError::BadLength(String::from_utf8_lossy(text).into_owned()))?;
    if n > max {
        return Err(CodecError::TooLong { what, len: n, max });
    }
    Ok(Some(n))
}

fn scan(buf: &[u8], pos: usize, depth: usize) -> Result<Scan, CodecError> {
    if depth > MAX_DEPTH {
        return Err(CodecError::TooDeep);
    }
    let Some(&ty) = buf.get(pos) else {
        return Ok(Scan::Need(pos + 1));
    };
    let Some((end, cr)) = line(buf, pos + 1, MAX_INLINE)? else {
        return Ok(Scan::Need(buf.len() + 1));
    };
    let head = &buf[pos + 1..cr];
    let text = pos + 1..cr;
    let node = |kind| Node {
        span: pos..end,
        kind,
    };
    let simple = |kind| Ok(Scan::Done(node(kind), end));
    match ty {
        b'+' => simple(Kind::Simple(text)),
        b'-' => simple(Kind::Error(text)),
        b':' => simple(Kind::Integer(parse_int(head)?)),
        b',' | b'(' => simple(Kind::Number(text)),
        b'_' => simple(Kind::Null),
        b'#' => match head {
            b"t" => simple(Kind::Bool(true)),
            b"f" => simple(Kind::Bool(false)),
            _ => Err(CodecError::BadBoolean),
        },
        b'$' | b'!' | b'=' => {
            let Some(len) = parse_len(head, MAX_BULK, "bulk string")? else {
                return simple(Kind::Null);
            };
            let stop = end + len;
            if buf.len() < stop + 2 {
                return Ok(Scan::Need(stop + 2));
            }
            if &buf[stop..stop + 2] != b"\r\n" {
                return Err(CodecError::MissingCrlf);
            }
            let payload = end..stop;
            let kind = match ty {
                b'$' => Kind::Bulk(payload),
                b'!' => Kind::BulkError(payload),
                // `txt:` / `mkd:` precede the text.
                _ => Kind::Verbatim(payload.start.saturating_add(4).min(stop)..stop),
            };
            Ok(Scan::Done(
                Node {
                    span: pos..stop + 2,
                    kind,
                },
                stop + 2,
            ))
        }
        b'*' | b'%' | b'~' | b'>' | b'|' => {
            let Some(n) = parse_len(head, MAX_ELEMENTS, "aggregate")? else {
                return simple(Kind::Null);
            };
            let count = if matches!(ty, b'%' | b'|') { n * 2 } else { n };
            let mut items = Vec::with_capacity(count.min(1024));
            let mut at = end;
            for _ in 0..count {
                match scan(buf, at, depth + 1)? {
                    Scan::Done(item, next) => {
                        items.push(item);
                        at = next;
                    }
                    need => return Ok(need),
                }
            }
            let kind = match ty {
                b'*' => Kind::Array(items),
                b'%' => Kind::Map(items),
                b'~' => Kind::Set(items),
                b'>' => Kind::Push(items),
                _ => match scan(buf, at, depth + 1)? {
                    Scan::Done(inner, next) => {
                        at = next;
                        Kind::Attribute(items, Box::new(inner))
                    }
                    need => return Ok(need),
                },
            };
            Ok(Scan::Done(
                Node {
                    span: pos..at,
                    kind,
                },
                at,
            ))
        }
        other => Err(CodecError::UnknownType(other)),
    }
}

/// A decoder for one direction: remembers how many bytes the frame being
/// received needs at least, so a large frame arriving in pieces is not
/// rescanned on every read.
#[derive(Debug, Default)]
pub struct Decoder {
    need: usize,
}

impl Decoder {
    /// Splits the next whole reply off `buf`, if one is buffered.
    pub fn reply(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        if buf.is_empty() || buf.len() < self.need {
            return Ok(None);
        }
        match scan(buf, 0, 0)? {
            Scan::Need(n) => {
                self.need = n;
                // Not all at once: a header alone must not cost its size in memory.
                buf.reserve(n.saturating_sub(buf.len()).min(1 << 20));
                Ok(None)
            }
            Scan::Done(node, end) => {
                self.need = 0;
                Ok(Some(Frame {
                    raw: buf.split_to(end).freeze(),
                    node,
                }))
            }
        }
    }

    /// Splits the next whole command off `buf`: a multibulk array of bulk
    /// strings, or an inline command line. Empty commands (a blank line,
    /// `*0`), which Redis ignores without a reply, come back with no args.
    pub fn command(&mut self, buf: &mut BytesMut) -> Result<Option<Command>, CodecError> {
        if buf.is_empty() || buf.len() < self.need {
            return Ok(None);
        }
        if buf[0] != b'*' {
            return self.inline(buf);
        }
        let frame = match self.reply(buf)? {
            Some(f) => f,
            None => return Ok(None),
        };
        let items = match &frame.node.kind {
            Kind::Array(items) => items.as_slice(),
            _ => &[],
        };
        let mut args = Vec::with_capacity(items.len());
        for item in items {
            match &item.kind {
                Kind::Bulk(r) => args.push(frame.raw.slice(r.clone())),
                _ => {
                    return Err(CodecError::NotBulk(
                        frame.raw.get(item.span.start).copied().unwrap_or(0),
                    ));
                }
            }
        }
        Ok(Some(Command {
            raw: frame.raw,
            args,
            inline: false,
        }))
    }

    fn inline(&mut self, buf: &mut BytesMut) -> Result<Option<Command>, CodecError> {
        // Redis ends inline commands at LF, CR optional.
        let Some(nl) = memchr::memchr(b'\n', buf) else {
            if buf.len() > MAX_INLINE {
                return Err(CodecError::TooLong {
                    what: "inline command",
                    len: buf.len(),
                    max: MAX_INLINE,
                });
            }
            self.need = buf.len() + 1;
            return Ok(None);
        };
        self.need = 0;
        let raw = buf.split_to(nl + 1).freeze();
        let text = raw[..nl].strip_suffix(b"\r").unwrap_or(&raw[..nl]);
        let args = split_inline(text)?.into_iter().map(Bytes::from).collect();
        Ok(Some(Command {
            raw,
            args,
            inline: true,
        }))
    }
}

/// Splits an inline command the way redis-cli and Redis do: whitespace
/// between arguments, `"…"` with backslash escapes, `'…'` literal.
pub fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, CodecError> {
    let mut args = Vec::new();
    let mut i = 0;
    while i < line.len() {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line.len() {
            break;
        }
        let mut arg = Vec::new();
        match line[i] {
            q @ (b'"' | b'\'') => {
                i += 1;
                loop {
                    match line.get(i) {
                        None => return Err(CodecError::Quotes),
                        Some(&c) if c == q => break,
                        // Single quotes know one escape: \'.
                        Some(b'\\') if q == b'\'' => {
                            if line.get(i + 1) == Some(&b'\'') {
                                arg.push(b'\'');
                                i += 2;
                            } else {
                                arg.push(b'\\');
                                i += 1;
                            }
                        }
                        Some(b'\\') => {
                            let esc = line.get(i + 1).copied().ok_or(CodecError::Quotes)?;
                            let hex = line
                                .get(i + 2..i + 4)
                                .and_then(|h| std::str::from_utf8(h).ok())
                                .and_then(|h| u8::from_str_radix(h, 16).ok());
                            match (esc, hex) {
                                (b'x', Some(b)) => {
                                    arg.push(b);
                                    i += 4;
                                    continue;
                                }
                                (b'n', _) => arg.push(b'\n'),
                                (b'r', _) => arg.push(b'\r'),
                                (b't', _) => arg.push(b'\t'),
                                (b'b', _) => arg.push(8),
                                (b'a', _) => arg.push(7),
                                (c, _) => arg.push(c),
                            }
                            i += 2;
                        }
                        Some(&c) => {
                            arg.push(c);
                            i += 1;
                        }
                    }
                }
                i += 1;
                if line.get(i).is_some_and(|c| !c.is_ascii_whitespace()) {
                    return Err(CodecError::Quotes);
                }
            }
            _ => {
                while i < line.len() && !line[i].is_ascii_whitespace() {
                    arg.push(line[i]);
                    i += 1;
                }
            }
        }
        args.push(arg);
    }
    Ok(args)
}

/// A simple error reply: `-<message>\r\n`, CR and LF in the message made
/// spaces so it stays one line.
pub fn error(message: &str) -> Bytes {
    let mut out = Vec::with_capacity(message.len() + 3);
    out.push(b'-');
    out.extend(
        message
            .bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

/// A command as a multibulk array.
pub fn command(args: &[&[u8]]) -> Bytes {
    let mut out = Vec::new();
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        bulk_into(&mut out, a);
    }
    Bytes::from(out)
}

fn bulk_into(out: &mut Vec<u8>, value: &[u8]) {
    out.extend_from_slice(format!("${}\r\n", value.len()).as_bytes());
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The frame with some string elements replaced by new values (spans from
/// its tree, in any order, not overlapping): everything else keeps its
/// original bytes. A replaced element becomes a bulk string (a verbatim
/// string keeps its type and format).
pub fn splice(raw: &[u8], mut edits: Vec<(&Node, Vec<u8>)>) -> Bytes {
    edits.sort_by_key(|(n, _)| n.span.start);
    let mut out = Vec::with_capacity(raw.len() + 64);
    let mut at = 0;
    for (node, value) in edits {
        out.extend_from_slice(&raw[at..node.span.start]);
        match &node.kind {
            Kind::Verbatim(r) => {
                let format = raw
                    .get(r.start.saturating_sub(4)..r.start)
                    .unwrap_or(b"txt:");
                out.extend_from_slice(format!("={}\r\n", value.len() + 4).as_bytes());
                out.extend_from_slice(format);
                out.extend_from_slice(&value);
                out.extend_from_slice(b"\r\n");
            }
            _ => bulk_into(&mut out, &value),
        }
        at = node.span.end;
    }
    out.extend_from_slice(&raw[at..]);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(bytes: &[u8]) -> Result<Option<Frame>, CodecError> {
        Decoder::default().reply(&mut BytesMut::from(bytes))
    }

    fn args(c: &Command) -> Vec<&[u8]> {
        c.args.iter().map(|a| &a[..]).collect()
    }

    #[test]
    fn commands_multibulk_and_inline_pipelined() {
        let mut buf = BytesMut::from(
            &b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nv\r\nlo\r\nget k\r\n\r\nset 'a b' \"c\\x41\\n\"\n*1\r\n$4\r\nPI"[..],
        );
        let mut d = Decoder::default();
        let set = d.command(&mut buf).unwrap().unwrap();
        assert_eq!(args(&set), [&b"SET"[..], b"k", b"v\r\nlo"]);
        assert_eq!(
            &set.raw[..],
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nv\r\nlo\r\n"
        );
        let get = d.command(&mut buf).unwrap().unwrap();
        assert!(get.inline);
        assert_eq!(args(&get), [&b"get"[..], b"k"]);
        let blank = d.command(&mut buf).unwrap().unwrap();
        assert!(blank.args.is_empty());
        let quoted = d.command(&mut buf).unwrap().unwrap();
        assert_eq!(args(&quoted), [&b"set"[..], b"a b", b"cA\n"]);
        assert!(d.command(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"NG\r\n");
        let ping = d.command(&mut buf).unwrap().unwrap();
        assert_eq!(args(&ping), [&b"PING"[..]]);
        assert!(buf.is_empty());
    }

    #[test]
    fn split_in_every_place_waits() {
        let whole = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
        for cut in 0..whole.len() {
            let mut d = Decoder::default();
            let mut buf = BytesMut::from(&whole[..cut]);
            assert!(d.command(&mut buf).unwrap().is_none(), "cut {cut}");
            buf.extend_from_slice(&whole[cut..]);
            let c = d.command(&mut buf).unwrap().unwrap();
            assert_eq!(args(&c), [&b"GET"[..], b"key"]);
        }
    }

    #[test]
    fn resp3_replies() {
        let raw =
            b"|1\r\n+ttl\r\n:3\r\n%2\r\n$4\r\nname\r\n=8\r\ntxt:anne\r\n+n\r\n~2\r\n#t\r\n_\r\n";
        let f = reply(raw).unwrap().unwrap();
        assert_eq!(f.raw.len(), raw.len());
        let Kind::Attribute(attrs, inner) = &f.node.kind else {
            panic!("{:?}", f.node)
        };
        assert_eq!(attrs.len(), 2);
        let Kind::Map(items) = &inner.kind else {
            panic!()
        };
        assert_eq!(items[1].text(&f.raw), Some(&b"anne"[..]));
        assert_eq!(
            items[3].kind,
            Kind::Set(vec![
                Node {
                    span: 50..54,
                    kind: Kind::Bool(true)
                },
                Node {
                    span: 54..57,
                    kind: Kind::Null
                }
            ])
        );
        let push = reply(b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n")
            .unwrap()
            .unwrap();
        assert!(matches!(push.node.kind, Kind::Push(ref v) if v.len() == 3));
        assert_eq!(reply(b"$-1\r\n").unwrap().unwrap().node.kind, Kind::Null);
        assert_eq!(reply(b"*-1\r\n").unwrap().unwrap().node.kind, Kind::Null);
        assert_eq!(
            reply(b":-42\r\n").unwrap().unwrap().node.kind,
            Kind::Integer(-42)
        );
    }

    #[test]
    fn malformed_is_an_error() {
        assert_eq!(reply(b"?x\r\n").unwrap_err(), CodecError::UnknownType(b'?'));
        assert!(matches!(reply(b"$abc\r\n"), Err(CodecError::BadLength(_))));
        assert!(matches!(reply(b"$-2\r\n"), Err(CodecError::BadLength(_))));
        assert_eq!(reply(b"$1\r\nab\r\n").unwrap_err(), CodecError::MissingCrlf);
        assert_eq!(reply(b"*?\r\n").unwrap_err(), CodecError::Streamed);
        assert!(matches!(
            reply(b"$999999999999\r\n"),
            Err(CodecError::TooLong { .. })
        ));
        assert_eq!(reply(b":1\n").unwrap_err(), CodecError::MissingCrlf);
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2);
        assert_eq!(reply(deep.as_bytes()).unwrap_err(), CodecError::TooDeep);
        let mut d = Decoder::default();
        assert_eq!(
            d.command(&mut BytesMut::from(&b"*1\r\n:1\r\n"[..]))
                .unwrap_err(),
            CodecError::NotBulk(b':')
        );
        assert_eq!(
            d.command(&mut BytesMut::from(&b"set \"a\r\n"[..]))
                .unwrap_err(),
            CodecError::Quotes
        );
        let long = vec![b'a'; MAX_INLINE + 1];
        assert!(d.command(&mut BytesMut::from(&long[..])).is_err());
    }

    #[test]
    fn splice_replaces_only_edited_values() {
        let raw = b"*3\r\n$5\r\nalice\r\n=8\r\ntxt:a@bc\r\n:1\r\n";
        let f = reply(raw).unwrap().unwrap();
        let items = f.node.elements().unwrap();
        let out = splice(
            &f.raw,
            vec![(&items[1], b"[email]".to_vec()), (&items[0], b"x".to_vec())],
        );
        assert_eq!(&out[..], b"*3\r\n$1\r\nx\r\n=11\r\ntxt:[email]\r\n:1\r\n");
        assert!(reply(&out).unwrap().is_some());
        assert_eq!(splice(&f.raw, vec![]), f.raw);
    }

    #[test]
    fn error_is_one_line() {
        assert_eq!(&error("NOPERM a\r\nb")[..], b"-NOPERM a  b\r\n");
    }
}
