//! What replaces a detected value, and the keyed hash behind `hash`.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::MaskError;

/// How a detected value is replaced.
///
/// Written in config and in the policy's `mask` list as `redact`, `mask`,
/// `partial:N`, `hash` or `null`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Strategy {
    /// A fixed token naming the entity: `[REDACTED:email]`.
    Redact,
    /// Same length and separators, letters and digits become `*`, keeping
    /// what identifies the format: `j****@*****.com`, `****-****-****-4444`.
    Mask,
    /// Every letter and digit becomes `*` except the last `keep_last`.
    Partial { keep_last: u8 },
    /// `tok_` and 16 hex digits of HMAC-SHA256 under the engine's key: the
    /// same value always gives the same token (joins and counts still work)
    /// and without the key no dictionary can reverse it.
    Hash,
    /// The whole value becomes NULL where the caller can say so (a SQL
    /// column); as text, and for a value found inside longer text, it is
    /// redacted.
    Null,
}

/// The longest replacement a span can get, whatever its own length: a
/// redact token with a 32-byte entity name is 43 bytes, a hash token 20.
/// Masking therefore never lengthens a value by more than this per span.
pub const MAX_TOKEN_LEN: usize = 48;

/// Longest entity name a custom pattern may have (keeps [`MAX_TOKEN_LEN`]).
pub(crate) const MAX_NAME_LEN: usize = 32;

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strategy::Redact => f.write_str("redact"),
            Strategy::Mask => f.write_str("mask"),
            Strategy::Partial { keep_last } => write!(f, "partial:{keep_last}"),
            Strategy::Hash => f.write_str("hash"),
            Strategy::Null => f.write_str("null"),
        }
    }
}

impl std::str::FromStr for Strategy {
    type Err = MaskError;

    fn from_str(s: &str) -> Result<Self, MaskError> {
        Ok(match s {
            "redact" => Strategy::Redact,
            "mask" => Strategy::Mask,
            "hash" => Strategy::Hash,
            "null" => Strategy::Null,
            _ => {
                let n = s
                    .strip_prefix("partial:")
                    .and_then(|n| n.parse::<u8>().ok())
                    .ok_or_else(|| MaskError::Strategy(s.to_owned()))?;
                Strategy::Partial { keep_last: n }
            }
        })
    }
}

impl TryFrom<String> for Strategy {
    type Error = MaskError;
    fn try_from(s: String) -> Result<Self, MaskError> {
        s.parse()
    }
}

impl From<Strategy> for String {
    fn from(s: Strategy) -> String {
        s.to_string()
    }
}

/// How `mask` keeps the shape of one entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// First character of the local part and the top-level domain stay.
    Email,
    /// The last four letters/digits stay (cards, IBANs, national ids).
    Last4,
    /// The last two digits stay (phone numbers).
    Last2,
    /// A known token prefix stays (`ghp_`, `sk-`, `AKIA`), the rest is `*`.
    Prefix,
    /// Header and footer lines of a PEM block stay, its body becomes `*`.
    Pem,
    /// Everything alphanumeric becomes `*`.
    All,
}

/// Writes the replacement of `value` (one detected span, or a whole value)
/// into `out`.
pub(crate) fn apply(
    strategy: Strategy,
    shape: Shape,
    entity: &str,
    value: &[u8],
    key: &[u8],
    out: &mut Vec<u8>,
) {
    match strategy {
        Strategy::Redact | Strategy::Null => redact_token(entity, out),
        Strategy::Hash => hash_token(key, value, out),
        Strategy::Partial { keep_last } => star(value, 0, keep_last as usize, out),
        Strategy::Mask => mask_shape(shape, value, out),
    }
}

pub(crate) fn redact_token(entity: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"[REDACTED:");
    out.extend_from_slice(entity.as_bytes());
    out.push(b']');
}

fn hash_token(key: &[u8], value: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mac = hmac_sha256(key, value);
    out.extend_from_slice(b"tok_");
    for b in &mac[..8] {
        out.push(HEX[(b >> 4) as usize]);
        out.push(HEX[(b & 15) as usize]);
    }
}

/// Replaces letters and digits with `*`, keeping the first `keep_first` and
/// the last `keep_last` of them; separators stay where they were. Non-ASCII
/// bytes are copied (detected spans are ASCII; whole values may not be, and
/// starring half of a UTF-8 sequence would corrupt it).
fn star(value: &[u8], keep_first: usize, keep_last: usize, out: &mut Vec<u8>) {
    let total = value.iter().filter(|b| b.is_ascii_alphanumeric()).count();
    let mut seen = 0;
    for &b in value {
        if b.is_ascii_alphanumeric() {
            let keep = seen < keep_first || seen + keep_last >= total;
            out.push(if keep { b } else { b'*' });
            seen += 1;
        } else {
            out.push(b);
        }
    }
}

fn mask_shape(shape: Shape, value: &[u8], out: &mut Vec<u8>) {
    match shape {
        Shape::Email => {
            let Some(at) = value.iter().rposition(|&b| b == b'@') else {
                return star(value, 0, 0, out);
            };
            star(&value[..at], 1, 0, out);
            out.push(b'@');
            let domain = &value[at + 1..];
            let tld = domain
                .iter()
                .rposition(|&b| b == b'.')
                .unwrap_or(domain.len());
            star(&domain[..tld], 0, 0, out);
            out.extend_from_slice(&domain[tld..]);
        }
        Shape::Last4 => star(value, 0, 4, out),
        Shape::Last2 => star(value, 0, 2, out),
        Shape::Prefix => {
            // Up to and including the first `_` or `-`, or 4 characters
            // for AKIA/AIza-style keys.
            let cut = value
                .iter()
                .take(12)
                .position(|&b| b == b'_' || b == b'-')
                .map_or(4.min(value.len()), |p| p + 1);
            out.extend_from_slice(&value[..cut]);
            star(&value[cut..], 0, 0, out);
        }
        Shape::Pem => {
            // Keep the BEGIN/END lines (they say what kind of key it was).
            for line in value.split_inclusive(|&b| b == b'\n') {
                if line.starts_with(b"-----") {
                    out.extend_from_slice(line);
                } else {
                    star(line, 0, 0, out);
                }
            }
        }
        Shape::All => star(value, 0, 0, out),
    }
}

/// Is this already what a strategy writes? Whole-value rules skip such
/// values so that masking twice changes nothing.
pub(crate) fn looks_masked(value: &[u8]) -> bool {
    if value.starts_with(b"[REDACTED:") && value.ends_with(b"]") {
        return true;
    }
    if value.len() == 20
        && value.starts_with(b"tok_")
        && value[4..]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    {
        return true;
    }
    false
}

/// HMAC-SHA256 (RFC 2104). Written out rather than pulled in: it is ten
/// lines over the sha2 crate the workspace already has.
pub(crate) fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for i in 0..64 {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let inner = Sha256::new()
        .chain_update(ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(opad)
        .chain_update(inner)
        .finalize()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: Strategy, shape: Shape, v: &str) -> String {
        let mut out = Vec::new();
        apply(s, shape, "email", v.as_bytes(), b"k", &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn shapes() {
        assert_eq!(
            run(Strategy::Mask, Shape::Email, "john@example.com"),
            "j***@*******.com"
        );
        assert_eq!(
            run(Strategy::Mask, Shape::Last4, "4111-1111-1111-4444"),
            "****-****-****-4444"
        );
        assert_eq!(
            run(Strategy::Mask, Shape::Prefix, "ghp_abc123"),
            "ghp_******"
        );
        assert_eq!(
            run(Strategy::Partial { keep_last: 2 }, Shape::All, "123-45"),
            "***-45"
        );
        assert_eq!(run(Strategy::Redact, Shape::All, "x"), "[REDACTED:email]");
        let h = run(Strategy::Hash, Shape::All, "john@example.com");
        assert_eq!(h.len(), 20);
        assert!(looks_masked(h.as_bytes()));
        assert_eq!(h, run(Strategy::Hash, Shape::All, "john@example.com"));
    }

    #[test]
    fn strategy_round_trips_as_text() {
        for s in ["redact", "mask", "partial:4", "hash", "null"] {
            assert_eq!(s.parse::<Strategy>().unwrap().to_string(), s);
        }
        assert!("partial:x".parse::<Strategy>().is_err());
    }
}
