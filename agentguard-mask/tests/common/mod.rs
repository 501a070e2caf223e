//! Deterministic generators of valid entity instances and near misses,
//! shared by the corpus test, the property tests and the bench.
#![allow(dead_code, reason = "each test binary uses a different part")]

use sha2::{Digest, Sha256};

/// xorshift64*: deterministic, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
    pub fn digits(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.below(10) as u8).collect()
    }
    pub fn chars(&mut self, n: usize, alphabet: &[u8]) -> String {
        (0..n).map(|_| *self.pick(alphabet) as char).collect()
    }
}

pub const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
pub const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
pub const HEX: &[u8] = b"0123456789abcdef";

fn s(d: &[u8]) -> String {
    d.iter().map(|x| (b'0' + x) as char).collect()
}

fn luhn_digit(body: &[u8]) -> u8 {
    let mut sum = 0u32;
    for (i, &x) in body.iter().rev().enumerate() {
        let mut v = x as u32;
        if i % 2 == 0 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    ((10 - sum % 10) % 10) as u8
}

fn group(d: &str, sizes: &[usize], sep: &str) -> String {
    let mut out = Vec::new();
    let mut at = 0;
    for &n in sizes {
        out.push(&d[at..(at + n).min(d.len())]);
        at += n;
    }
    out.join(sep)
}

pub fn card(r: &mut Rng) -> String {
    let (prefix, len): (&[u8], usize) = *r.pick(&[
        (&[4][..], 16),
        (&[4], 16),
        (&[5, 1], 16),
        (&[5, 5], 16),
        (&[2, 2, 2, 1], 16),
        (&[3, 4], 15),
        (&[3, 7], 15),
        (&[6, 0, 1, 1], 16),
        (&[3, 5, 2, 8], 16),
        (&[6, 2], 16),
    ]);
    let mut d = prefix.to_vec();
    d.extend(r.digits(len - 1 - prefix.len()));
    d.push(luhn_digit(&d));
    let plain = s(&d);
    let amex = len == 15;
    match r.below(3) {
        0 => plain,
        1 if amex => group(&plain, &[4, 6, 5], " "),
        1 => group(&plain, &[4, 4, 4, 4], " "),
        _ if amex => group(&plain, &[4, 6, 5], "-"),
        _ => group(&plain, &[4, 4, 4, 4], "-"),
    }
}

/// A card-shaped number that fails Luhn.
pub fn bad_card(r: &mut Rng) -> String {
    let c = card(r).into_bytes();
    let mut c = c;
    let last = c.len() - 1;
    c[last] = b'0' + (c[last] - b'0' + 1 + r.below(8) as u8) % 10;
    String::from_utf8(c).unwrap()
}

fn mod97(s: &str) -> u32 {
    let mut rem = 0u32;
    for c in s.bytes() {
        if c.is_ascii_digit() {
            rem = (rem * 10 + (c - b'0') as u32) % 97;
        } else {
            rem = (rem * 100 + (c - b'A' + 10) as u32) % 97;
        }
    }
    rem
}

pub fn iban(r: &mut Rng) -> String {
    let (cc, len, letters) = *r.pick(&[
        ("GB", 22usize, 4usize),
        ("DE", 22, 0),
        ("FR", 27, 0),
        ("NL", 18, 4),
        ("ES", 24, 0),
        ("IT", 27, 1),
        ("CH", 21, 0),
        ("BE", 16, 0),
        ("PL", 28, 0),
        ("NO", 15, 0),
    ]);
    let bban = format!(
        "{}{}",
        r.chars(letters, UPPER),
        s(&r.digits(len - 4 - letters))
    );
    let check = 98 - mod97(&format!("{bban}{cc}00"));
    let iban = format!("{cc}{check:02}{bban}");
    if r.below(2) == 0 {
        iban
    } else {
        iban.as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

pub fn bad_iban(r: &mut Rng) -> String {
    let mut i = iban(r).into_bytes();
    // Swap two adjacent digits in the BBAN: MOD-97 catches it.
    let pos = (6..i.len() - 1)
        .find(|&p| i[p].is_ascii_digit() && i[p + 1].is_ascii_digit() && i[p] != i[p + 1])
        .unwrap_or(6);
    i.swap(pos, pos + 1);
    String::from_utf8(i).unwrap()
}

pub fn email(r: &mut Rng) -> String {
    let first = r.pick(&[
        "john",
        "maria",
        "li",
        "ahmed",
        "sofia",
        "j",
        "anne-marie",
        "o.brien",
    ]);
    let last = r.pick(&["doe", "garcia", "wei", "khan", "rossi", "smith99", "x"]);
    let sep = r.pick(&[".", "_", "", "+news."]);
    let domain = r.pick(&[
        "example.com",
        "mail.example.co.uk",
        "corp-mail.io",
        "uni.edu",
        "gmail.com",
        "sub.domain.example.org",
    ]);
    format!("{first}{sep}{last}@{domain}")
}

fn ssn_digits(r: &mut Rng) -> Vec<u8> {
    loop {
        let area = r.range(1, 899);
        if area == 666 {
            continue;
        }
        let group = r.range(1, 99);
        let serial = r.range(1, 9999);
        let n = format!("{area:03}{group:02}{serial:04}");
        if n == "078051120" || n == "219099999" || n == "123456789" {
            continue;
        }
        return n.bytes().map(|b| b - b'0').collect();
    }
}

pub fn ssn(r: &mut Rng) -> String {
    let d = s(&ssn_digits(r));
    group(&d, &[3, 2, 4], "-")
}

pub fn ssn_bare(r: &mut Rng) -> String {
    s(&ssn_digits(r))
}

pub fn bad_ssn(r: &mut Rng) -> String {
    let d = s(&ssn_digits(r));
    // Areas never issued; 9xx only with a group outside the ITIN ranges.
    let area = r.pick(&["000", "666", "900", "987"]);
    let group = if area.starts_with('9') {
        format!("{:02}", r.range(10, 49))
    } else {
        d[3..5].to_owned()
    };
    format!("{area}-{group}-{}", &d[5..])
}

pub fn itin(r: &mut Rng) -> String {
    let g = *r.pick(&[50u64, 65, 70, 78, 88, 90, 92, 94, 99]);
    format!("9{:02}-{g:02}-{:04}", r.below(100), r.range(0, 9999))
}

pub fn phone(r: &mut Rng) -> String {
    let area = r.range(2, 9) * 100 + r.range(0, 9) * 10 + r.range(2, 9);
    let exch = r.range(2, 9) * 100 + r.range(2, 9) * 10 + r.range(0, 9);
    let line = r.range(0, 9999);
    match r.below(6) {
        0 => format!("+1 {area}-{exch}-{line:04}"),
        1 => format!("({area}) {exch}-{line:04}"),
        2 => format!("{area}-{exch}-{line:04}"),
        3 => format!("+44 20 {} {:04}", r.range(7000, 8999), r.range(0, 9999)),
        4 => format!("+49 30 {}", r.range(1_000_000, 99_999_999)),
        _ => format!("+{area}{exch}{line:04}"),
    }
}

pub fn aba(r: &mut Rng) -> String {
    loop {
        let p = *r.pick(&[1u8, 2, 3, 5, 9, 11, 12, 21, 26, 31, 32, 61, 67, 72]);
        let mut d = vec![p / 10, p % 10];
        d.extend(r.digits(6));
        let w = [3u32, 7, 1, 3, 7, 1, 3, 7];
        let sum: u32 = d.iter().zip(w).map(|(&x, w)| x as u32 * w).sum();
        d.push(((10 - sum % 10) % 10) as u8);
        if d.iter().all(|&x| x == 0) {
            continue;
        }
        return s(&d);
    }
}

pub fn cpf(r: &mut Rng) -> String {
    let mut d = r.digits(9);
    for n in [9usize, 10] {
        let sum: u32 = (0..n)
            .map(|i| d[i] as u32 * (n as u32 + 1 - i as u32))
            .sum();
        let c = (sum * 10) % 11;
        d.push(if c == 10 { 0 } else { c as u8 });
    }
    let t = s(&d);
    format!("{}.{}.{}-{}", &t[..3], &t[3..6], &t[6..9], &t[9..])
}

pub fn cnpj(r: &mut Rng) -> String {
    let mut d = r.digits(8);
    d.extend([0, 0, 0, 1]);
    let w1 = [5u32, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2];
    let w2 = [6u32, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2];
    for w in [&w1[..], &w2[..]] {
        let sum: u32 = d.iter().zip(w).map(|(&x, &w)| x as u32 * w).sum();
        let c = sum % 11;
        d.push(if c < 2 { 0 } else { (11 - c) as u8 });
    }
    let t = s(&d);
    format!(
        "{}.{}.{}/{}-{}",
        &t[..2],
        &t[2..5],
        &t[5..8],
        &t[8..12],
        &t[12..]
    )
}

pub fn nino(r: &mut Rng) -> String {
    let first = r.chars(1, b"ABCEGHJKLMNPRSTWXYZ");
    let second = r.chars(1, b"ABCEGHJKLMNPRSTWXYZ");
    let pair = format!("{first}{second}");
    if matches!(
        pair.as_str(),
        "BG" | "GB" | "NK" | "KN" | "TN" | "NT" | "ZZ"
    ) {
        return nino(r);
    }
    let d = s(&r.digits(6));
    let suffix = r.chars(1, b"ABCD");
    if r.below(2) == 0 {
        format!("{pair}{d}{suffix}")
    } else {
        format!("{pair} {} {} {} {suffix}", &d[..2], &d[2..4], &d[4..])
    }
}

pub fn nhs(r: &mut Rng) -> String {
    loop {
        let d = r.digits(9);
        let sum: u32 = d
            .iter()
            .enumerate()
            .map(|(i, &x)| x as u32 * (10 - i as u32))
            .sum();
        let c = 11 - sum % 11;
        let c = if c == 11 { 0 } else { c };
        if c == 10 || d.iter().all(|&x| x == d[0]) {
            continue;
        }
        let t = s(&d);
        return format!("{} {} {}{c}", &t[..3], &t[3..6], &t[6..]);
    }
}

pub fn ipv4(r: &mut Rng) -> String {
    format!(
        "{}.{}.{}.{}",
        r.range(1, 223),
        r.below(256),
        r.below(256),
        r.range(1, 254)
    )
}

pub fn ipv6(r: &mut Rng) -> String {
    let g: Vec<String> = (0..8).map(|_| format!("{:x}", r.below(0x10000))).collect();
    match r.below(3) {
        0 => g.join(":"),
        1 => format!("2001:db8::{}:{}", g[0], g[1]),
        _ => format!("fe80::{}:{}:{}", g[2], g[3], g[4]),
    }
}

pub fn mac(r: &mut Rng) -> String {
    let b: Vec<String> = (0..6).map(|_| format!("{:02x}", r.below(256))).collect();
    b.join(if r.below(2) == 0 { ":" } else { "-" })
}

fn base58(data: &[u8]) -> String {
    const A: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let mut digits: Vec<u8> = Vec::new();
    for &byte in data {
        let mut carry = byte as u32;
        for d in digits.iter_mut() {
            carry += (*d as u32) << 8;
            *d = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let zeros = data.iter().take_while(|&&b| b == 0).count();
    let mut out: String = "1".repeat(zeros);
    out.extend(digits.iter().rev().map(|&d| A[d as usize] as char));
    out
}

pub fn btc(r: &mut Rng) -> String {
    let mut payload = vec![*r.pick(&[0u8, 5])];
    payload.extend((0..20).map(|_| r.below(256) as u8));
    let h = Sha256::digest(Sha256::digest(&payload));
    payload.extend_from_slice(&h[..4]);
    base58(&payload)
}

pub fn eth(r: &mut Rng) -> String {
    format!("0x{}", r.chars(40, HEX))
}

pub fn dob(r: &mut Rng) -> String {
    let (y, m, d) = (r.range(1940, 2005), r.range(1, 12), r.range(1, 28));
    match r.below(3) {
        0 => format!("{y}-{m:02}-{d:02}"),
        1 => format!("{d:02}/{m:02}/{y}"),
        _ => format!("{m}/{d}/{y}"),
    }
}

pub fn aws_key(r: &mut Rng) -> String {
    format!(
        "{}{}",
        r.pick(&["AKIA", "ASIA"]),
        r.chars(16, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
    )
}

pub fn github(r: &mut Rng) -> String {
    format!("{}_{}", r.pick(&["ghp", "gho", "ghs"]), r.chars(36, ALNUM))
}

pub fn gitlab(r: &mut Rng) -> String {
    format!("glpat-{}", r.chars(20, ALNUM))
}

pub fn slack(r: &mut Rng) -> String {
    format!(
        "xoxb-{}-{}-{}",
        r.range(1_000_000_000, 9_999_999_999),
        r.range(1_000_000_000_000, 9_999_999_999_999),
        r.chars(24, ALNUM)
    )
}

/// Random base62 with at least two of each class (as real keys have).
fn key_body(r: &mut Rng, n: usize) -> String {
    format!("Ab3Cd7{}", r.chars(n - 6, ALNUM))
}

pub fn openai(r: &mut Rng) -> String {
    if r.below(2) == 0 {
        format!("sk-proj-{}", key_body(r, 48))
    } else {
        format!("sk-{}", key_body(r, 48))
    }
}

pub fn anthropic(r: &mut Rng) -> String {
    format!("sk-ant-api03-{}", key_body(r, 93))
}

pub fn gcp(r: &mut Rng) -> String {
    format!("AIza{}", r.chars(35, ALNUM))
}

fn b64url(data: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        let k = c.len() + 1;
        for i in 0..k {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

pub fn jwt(r: &mut Rng) -> String {
    let alg = r.pick(&["HS256", "RS256", "ES384"]);
    let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
    let payload = format!(
        r#"{{"sub":"{}","iat":{}}}"#,
        r.range(1, 1 << 40),
        r.range(1_600_000_000, 1_800_000_000)
    );
    format!(
        "{}.{}.{}",
        b64url(header.as_bytes()),
        b64url(payload.as_bytes()),
        r.chars(
            43,
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        )
    )
}

pub fn pem(r: &mut Rng) -> String {
    let kind = r.pick(&["RSA ", "EC ", "", "OPENSSH "]);
    let lines: Vec<String> = (0..r.range(4, 12))
        .map(|_| {
            r.chars(
                64,
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
            )
        })
        .collect();
    format!(
        "-----BEGIN {kind}PRIVATE KEY-----\n{}\n-----END {kind}PRIVATE KEY-----",
        lines.join("\n")
    )
}

pub fn password(r: &mut Rng) -> String {
    format!("{}{}!", r.chars(8, ALNUM), r.range(10, 99))
}

/// Text that must not be masked: ids, versions, timestamps, hashes,
/// near misses of every entity.
pub fn decoy(r: &mut Rng) -> String {
    match r.below(22) {
        0 => bad_card(r),
        1 => bad_iban(r),
        2 => bad_ssn(r),
        3 => format!("order {}", r.range(100_000_000, 999_999_999)),
        4 => format!("v{}.{}.{}", r.below(20), r.below(50), r.below(200)),
        5 => format!(
            "version {}.{}.{}.{}",
            r.below(20),
            r.below(50),
            r.below(200),
            r.below(999)
        ),
        6 => format!(
            "{}-{}-4{}-a{}-{}",
            r.chars(8, HEX),
            r.chars(4, HEX),
            r.chars(3, HEX),
            r.chars(3, HEX),
            r.chars(12, HEX)
        ),
        7 => format!(
            "build 2023{:02}{:02}-{:04}",
            r.range(1, 12),
            r.range(1, 28),
            r.below(2400)
        ),
        8 => format!(
            "2024-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            r.range(1, 12),
            r.range(1, 28),
            r.below(24),
            r.below(60),
            r.below(60)
        ),
        9 => format!("ts={}", r.range(1_600_000_000, 1_800_000_000)),
        10 => format!("commit {}", r.chars(40, HEX)),
        11 => format!("sha256:{}", r.chars(64, HEX)),
        12 => format!("${}.{:02}", r.range(1, 99_999), r.below(100)),
        13 => format!("created {}", dob(r)),
        14 => format!(
            "pid {} on port {}",
            r.range(100, 4_000_000),
            r.range(1024, 65535)
        ),
        15 => format!("ticket #{}", r.range(10_000, 9_999_999)),
        16 => format!("{}@{}x.png", r.pick(&["icon", "logo"]), r.range(2, 3)),
        17 => format!("lodash@{}.{}.{}", r.below(5), r.below(20), r.below(30)),
        18 => format!(
            "tracking 1Z{}",
            r.chars(16, b"0123456789ABCDEFGHJKLMNPRSTUVWXYZ")
        ),
        19 => format!(
            "ISBN 978-{}-{}-{}-{}",
            r.below(10),
            r.range(10, 99),
            r.range(100_000, 999_999),
            r.below(10)
        ),
        20 => format!(
            "password: {}",
            r.pick(&["********", "required", "%s", "${DB_PASSWORD}", "<secret>"])
        ),
        _ => format!("{}:{:02}:{:02}", r.below(24), r.below(60), r.below(60)),
    }
}
