//! Checksums and structural rules: what turns "looks like" into "is".
//! Each takes the candidate's bytes and never panics on any input.

use sha2::{Digest, Sha256};

/// The ASCII digits of `s`, skipping separators, into a fixed buffer.
/// `None` if there are more than 32 (no entity here is longer).
pub(crate) fn digits(s: &[u8]) -> Option<([u8; 32], usize)> {
    let mut buf = [0u8; 32];
    let mut n = 0;
    for &b in s {
        if b.is_ascii_digit() {
            *buf.get_mut(n)? = b - b'0';
            n += 1;
        }
    }
    Some((buf, n))
}

pub(crate) fn luhn(d: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &x) in d.iter().rev().enumerate() {
        let mut v = x as u32;
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    !d.is_empty() && sum.is_multiple_of(10)
}

fn prefix_num(d: &[u8], n: usize) -> u32 {
    d.iter().take(n).fold(0, |acc, &x| acc * 10 + x as u32)
}

/// Known issuer prefixes and the lengths they issue.
pub(crate) fn card_issuer(d: &[u8]) -> bool {
    let len = d.len();
    let p1 = prefix_num(d, 1);
    let p2 = prefix_num(d, 2);
    let p3 = prefix_num(d, 3);
    let p4 = prefix_num(d, 4);
    let p6 = prefix_num(d, 6);
    let visa = p1 == 4 && matches!(len, 13 | 16 | 19);
    let mastercard = ((51..=55).contains(&p2) || (2221..=2720).contains(&p4)) && len == 16;
    let amex = (p2 == 34 || p2 == 37) && len == 15;
    let discover =
        (p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 || (622126..=622925).contains(&p6))
            && (16..=19).contains(&len);
    let jcb = (3528..=3589).contains(&p4) && (16..=19).contains(&len);
    let diners =
        ((300..=305).contains(&p3) || p2 == 36 || p2 == 38 || p2 == 39) && (14..=19).contains(&len);
    let unionpay = p2 == 62 && (16..=19).contains(&len);
    let mir = (2200..=2204).contains(&p4) && (16..=19).contains(&len);
    let maestro = matches!(
        p4,
        5018 | 5020 | 5038 | 5893 | 6304 | 6759 | 6761 | 6762 | 6763
    ) && (13..=19).contains(&len);
    visa || mastercard || amex || discover || jcb || diners || unionpay || mir || maestro
}

/// Group lengths of a separated card number: 4-4-4-4(-3), 4-6-5 (Amex),
/// 4-6-4 (Diners); one kind of separator throughout.
pub(crate) fn card_grouping(s: &[u8]) -> bool {
    let sep = s.iter().copied().find(|b| !b.is_ascii_digit());
    let Some(sep) = sep else { return true };
    let mut groups = [0usize; 8];
    let mut n = 0;
    for part in s.split(|&b| !b.is_ascii_digit()) {
        if n == groups.len() {
            return false;
        }
        groups[n] = part.len();
        n += 1;
    }
    if s.iter().any(|&b| !b.is_ascii_digit() && b != sep) {
        return false;
    }
    let g = &groups[..n];
    matches!(g, [4, 6, 5] | [4, 6, 4])
        || (g.len() >= 3
            && g[..g.len() - 1].iter().all(|&x| x == 4)
            && (1..=4).contains(&g[g.len() - 1]))
}

/// IBAN lengths by country (ISO 13616 registry).
const IBAN_LEN: &[(&[u8; 2], usize)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NL", 18),
    (b"NO", 15),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"SA", 24),
    (b"SC", 31),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
];

pub(crate) fn iban_len(country: &[u8]) -> Option<usize> {
    IBAN_LEN
        .iter()
        .find(|(c, _)| c.eq_ignore_ascii_case(country))
        .map(|&(_, n)| n)
}

/// MOD-97 over the IBAN's letters and digits (spaces skipped), country
/// code and check digits moved to the end, letters as 10..35.
pub(crate) fn iban_mod97(chars: &[u8]) -> bool {
    if chars.len() < 5 {
        return false;
    }
    let mut rem = 0u32;
    let rotated = chars[4..].iter().chain(&chars[..4]);
    for &c in rotated {
        let c = c.to_ascii_uppercase();
        match c {
            b'0'..=b'9' => rem = (rem * 10 + (c - b'0') as u32) % 97,
            b'A'..=b'Z' => rem = (rem * 100 + (c - b'A' + 10) as u32) % 97,
            _ => return false,
        }
    }
    rem == 1
}

/// US SSN rules: area not 000, 666 or 9xx; group not 00; serial not 0000;
/// not a number published as an example or used in advertising.
pub(crate) fn ssn(d: &[u8]) -> bool {
    if d.len() != 9 {
        return false;
    }
    let area = prefix_num(d, 3);
    let group = prefix_num(&d[3..], 2);
    let serial = prefix_num(&d[5..], 4);
    if area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0 {
        return false;
    }
    // 078-05-1120 (Woolworth wallet card), 219-09-9999 (SSA pamphlet),
    // 123-45-6789 (advertising), all-same digits (placeholders).
    let n = prefix_num(d, 9);
    !(n == 78_051_120 || n == 219_099_999 || n == 123_456_789 || d.iter().all(|&x| x == d[0]))
}

/// ITIN: 9xx-GG-xxxx with the group in 50–65, 70–88, 90–92 or 94–99.
pub(crate) fn itin(d: &[u8]) -> bool {
    if d.len() != 9 || d[0] != 9 {
        return false;
    }
    let group = prefix_num(&d[3..], 2);
    matches!(group, 50..=65 | 70..=88 | 90..=92 | 94..=99)
}

/// ABA routing number: weights 3-7-1 sum to a multiple of 10, and the
/// first two digits are a Federal Reserve district (00–12, 21–32), a thrift
/// (61–72) or traveller's cheques (80).
pub(crate) fn aba(d: &[u8]) -> bool {
    if d.len() != 9 {
        return false;
    }
    let p = prefix_num(d, 2);
    if !matches!(p, 0..=12 | 21..=32 | 61..=72 | 80) || d.iter().all(|&x| x == 0) {
        return false;
    }
    let w = [3u32, 7, 1];
    let sum: u32 = d
        .iter()
        .enumerate()
        .map(|(i, &x)| w[i % 3] * x as u32)
        .sum();
    sum.is_multiple_of(10)
}

/// Brazilian CPF: two mod-11 check digits; all-same digits are invalid.
pub(crate) fn cpf(d: &[u8]) -> bool {
    if d.len() != 11 || d.iter().all(|&x| x == d[0]) {
        return false;
    }
    let check = |n: usize| {
        let s: u32 = (0..n)
            .map(|i| d[i] as u32 * (n as u32 + 1 - i as u32))
            .sum();
        let r = (s * 10) % 11;
        if r == 10 { 0 } else { r as u8 }
    };
    check(9) == d[9] && check(10) == d[10]
}

/// Brazilian CNPJ: two mod-11 check digits with weights 5..2,9..2.
pub(crate) fn cnpj(d: &[u8]) -> bool {
    if d.len() != 14 || d.iter().all(|&x| x == d[0]) {
        return false;
    }
    let check = |n: usize| {
        let weights: &[u32] = if n == 12 {
            &[5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2]
        } else {
            &[6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2]
        };
        let s: u32 = (0..n).map(|i| d[i] as u32 * weights[i]).sum();
        let r = s % 11;
        if r < 2 { 0 } else { (11 - r) as u8 }
    };
    check(12) == d[12] && check(13) == d[13]
}

/// NHS number: weights 10..2 on the first nine digits, 11 - (sum mod 11) is
/// the tenth (11 means 0, 10 means invalid).
pub(crate) fn nhs(d: &[u8]) -> bool {
    if d.len() != 10 || d.iter().all(|&x| x == d[0]) {
        return false;
    }
    let s: u32 = (0..9).map(|i| d[i] as u32 * (10 - i as u32)).sum();
    let c = 11 - s % 11;
    let c = if c == 11 { 0 } else { c };
    c != 10 && c == d[9] as u32
}

/// UK National Insurance number prefix rules (the regex checks letters
/// by position; these two-letter pairs are never issued).
pub(crate) fn nino_prefix(p: &[u8]) -> bool {
    let p = [p[0].to_ascii_uppercase(), p[1].to_ascii_uppercase()];
    !matches!(&p, b"BG" | b"GB" | b"NK" | b"KN" | b"TN" | b"NT" | b"ZZ")
}

/// Base58Check (legacy Bitcoin addresses): decode, then the last 4 bytes
/// are the double SHA-256 of the rest.
pub(crate) fn base58check(s: &[u8]) -> bool {
    const ALPHABET: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let mut out = [0u8; 40];
    let mut len = 0usize;
    for &c in s {
        let Some(mut carry) = ALPHABET.iter().position(|&a| a == c).map(|v| v as u32) else {
            return false;
        };
        for b in out[..len].iter_mut().rev() {
            carry += (*b as u32) * 58;
            *b = (carry & 0xff) as u8;
            carry >>= 8;
        }
        while carry > 0 {
            if len == out.len() {
                return false;
            }
            out.copy_within(0..len, 1);
            out[0] = (carry & 0xff) as u8;
            len += 1;
            carry >>= 8;
        }
    }
    let zeros = s.iter().take_while(|&&c| c == b'1').count();
    let total = zeros + len;
    if total != 25 || total > out.len() {
        return false;
    }
    let mut full = [0u8; 25];
    full[zeros..].copy_from_slice(&out[..len]);
    let h = Sha256::digest(Sha256::digest(&full[..21]));
    h[..4] == full[21..]
}

/// Bech32 / bech32m checksum (BIP-173, BIP-350) for segwit addresses.
pub(crate) fn bech32(s: &[u8]) -> bool {
    const CHARSET: &[u8] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";
    let lower: Vec<u8> = s.iter().map(u8::to_ascii_lowercase).collect();
    if s.iter().any(u8::is_ascii_lowercase) && s.iter().any(u8::is_ascii_uppercase) {
        return false;
    }
    let Some(sep) = lower.iter().rposition(|&b| b == b'1') else {
        return false;
    };
    let (hrp, data) = (&lower[..sep], &lower[sep + 1..]);
    if hrp.is_empty() || data.len() < 6 {
        return false;
    }
    let mut values = Vec::with_capacity(hrp.len() * 2 + 1 + data.len());
    values.extend(hrp.iter().map(|&c| c >> 5));
    values.push(0);
    values.extend(hrp.iter().map(|&c| c & 31));
    for &c in data {
        match CHARSET.iter().position(|&x| x == c) {
            Some(v) => values.push(v as u8),
            None => return false,
        }
    }
    let mut chk: u32 = 1;
    for v in values {
        let top = chk >> 25;
        chk = ((chk & 0x1ff_ffff) << 5) ^ v as u32;
        for (i, g) in [
            0x3b6a_57b2u32,
            0x2650_8e6d,
            0x1ea1_19fa,
            0x3d42_33dd,
            0x2a14_62b3,
        ]
        .iter()
        .enumerate()
        {
            if (top >> i) & 1 == 1 {
                chk ^= g;
            }
        }
    }
    chk == 1 || chk == 0x2bc8_30a3
}

/// Decodes base64url (no padding needed) into `out`; `None` on a bad byte.
pub(crate) fn base64url_decode(s: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in s {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(())
}

/// A JWT header decodes to a JSON object naming its algorithm.
pub(crate) fn jwt_header(part: &[u8]) -> bool {
    if part.len() > 2048 {
        return false;
    }
    let mut json = Vec::with_capacity(part.len());
    if base64url_decode(part, &mut json).is_none() {
        return false;
    }
    json.first() == Some(&b'{') && json.windows(5).any(|w| w == b"\"alg\"")
}

/// A calendar date with a plausible year of birth.
pub(crate) fn date(y: u32, m: u32, d: u32) -> bool {
    let leap = (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1900..=2035).contains(&y) && d >= 1 && d <= days
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Vec<u8> {
        s.bytes()
            .filter(u8::is_ascii_digit)
            .map(|b| b - b'0')
            .collect()
    }

    #[test]
    fn checksums() {
        assert!(luhn(&d("4111111111111111")));
        assert!(!luhn(&d("4111111111111112")));
        assert!(card_issuer(&d("378282246310005")));
        assert!(iban_mod97(b"GB82WEST12345698765432"));
        assert!(!iban_mod97(b"GB82WEST12345698765433"));
        assert!(ssn(&d("536-22-1234")));
        assert!(!ssn(&d("078-05-1120")));
        assert!(!ssn(&d("666-12-1234")));
        assert!(itin(&d("912-70-1234")));
        assert!(aba(&d("011000015")));
        assert!(!aba(&d("011000016")));
        assert!(cpf(&d("529.982.247-25")));
        assert!(!cpf(&d("529.982.247-24")));
        assert!(cnpj(&d("11.222.333/0001-81")));
        assert!(!cnpj(&d("11.222.333/0001-82")));
        assert!(nhs(&d("943 476 5919")));
        assert!(!nhs(&d("943 476 5918")));
        assert!(base58check(b"1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2"));
        assert!(!base58check(b"1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN3"));
        assert!(bech32(b"bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"));
        assert!(!bech32(b"bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5"));
        assert!(jwt_header(b"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"));
        assert!(!jwt_header(b"eyJ0eXAiOiJKV1QifQ"));
        assert!(date(2000, 2, 29) && !date(1900, 2, 29) && !date(1985, 13, 1));
    }
}
