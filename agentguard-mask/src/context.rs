//! Context: the field name and the words just before a candidate make it
//! more or less likely. `123456789` in `ssn` is an SSN; in `order_id` it is
//! not; after "SSN:" it is.

use crate::entity::NEGATIVE_WORDS;

/// Score changes. A field name is stronger evidence than prose nearby.
const FIELD_POS: f32 = 0.5;
const FIELD_NEG: f32 = -0.4;
const NEAR_POS: f32 = 0.3;
const NEAR_NEG: f32 = -0.25;

/// Lower-case words joined and wrapped by `_` (`customerEmail`,
/// `customer-email` and `CUSTOMER_EMAIL` all become `_customer_email_`), in
/// a fixed buffer so scoring never allocates.
pub(crate) struct Words {
    buf: [u8; 128],
    len: usize,
}

impl Words {
    pub(crate) fn empty() -> Words {
        Words {
            buf: [0; 128],
            len: 0,
        }
    }

    pub(crate) fn new(s: &[u8]) -> Words {
        let mut w = Words::empty();
        let mut prev_lower = false;
        w.push(b'_');
        for &b in s {
            if w.len + 3 >= w.buf.len() {
                break;
            }
            if b.is_ascii_alphanumeric() {
                if b.is_ascii_uppercase() && prev_lower {
                    w.push(b'_');
                }
                prev_lower = b.is_ascii_lowercase() || b.is_ascii_digit();
                w.push(b.to_ascii_lowercase());
            } else {
                prev_lower = false;
                if w.buf[w.len - 1] != b'_' {
                    w.push(b'_');
                }
            }
        }
        if w.buf[w.len - 1] != b'_' {
            w.push(b'_');
        }
        w
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// `word` (which may itself hold `_`, like `tax_id`) appears as whole
    /// words.
    pub(crate) fn has(&self, word: &str) -> bool {
        let hay = self.as_bytes();
        let w = word.as_bytes();
        if w.is_empty() || hay.len() < w.len() + 2 {
            return false;
        }
        (1..=hay.len() - w.len() - 1)
            .any(|i| hay[i - 1] == b'_' && hay[i + w.len()] == b'_' && &hay[i..i + w.len()] == w)
    }

    fn has_any<S: AsRef<str>>(&self, words: &[S]) -> bool {
        words.iter().any(|w| self.has(w.as_ref()))
    }
}

/// The confidence of a weak detection after context.
pub(crate) fn score<S: AsRef<str>>(base: f32, keywords: &[S], field: &Words, before: &[u8]) -> f32 {
    let mut s = base;
    if field.has_any(keywords) {
        s += FIELD_POS;
    } else if field.has_any(NEGATIVE_WORDS) {
        s += FIELD_NEG;
    }
    let near = Words::new(before);
    if near.has_any(keywords) {
        s += NEAR_POS;
    } else if near.has_any(NEGATIVE_WORDS) {
        s += NEAR_NEG;
    }
    s.clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words() {
        assert_eq!(Words::new(b"customerEmail").as_bytes(), b"_customer_email_");
        assert_eq!(Words::new(b"users.SSN").as_bytes(), b"_users_ssn_");
        assert!(Words::new(b"tax-id").has("tax_id"));
        assert!(!Words::new(b"valid").has("id"));
        assert!(Words::new(b"order_id").has("id"));
    }

    #[test]
    fn field_name_decides_weak_numbers() {
        let kw = ["ssn"];
        assert!(score(0.3, &kw, &Words::new(b"ssn"), b"") >= 0.5);
        assert!(score(0.3, &kw, &Words::new(b"order_id"), b"") < 0.5);
        assert!(score(0.3, &kw, &Words::empty(), b"the SSN: ") >= 0.5);
    }
}
