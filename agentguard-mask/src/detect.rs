//! Finding sensitive values: one multi-pattern scan for candidates, then a
//! validator and a context score per candidate.
//!
//! How a scan goes, and why:
//! - A cheap prefilter first: every built-in pattern needs a digit, an `@`
//!   or one of a few literals (`AKIA`, `ghp_`, `eyJ`, `://`, `password`...).
//!   Text with none of them cannot match and is returned untouched without
//!   running any regex (most prose; see the bench).
//! - One leftmost-first regex over all patterns finds the next candidate
//!   start. If the winning pattern validates with high confidence it is
//!   taken; otherwise every pattern that matches at that start (one
//!   anchored overlapping search) is validated and the best is taken, so a
//!   Luhn-invalid "card" can still be a phone number.
//! - No candidate at a start: the scan moves on by one byte; a hit: it
//!   continues after the hit. The result at any position depends only on the
//!   bytes near it (every pattern has a bounded length), which is what lets
//!   the streaming masker give the same answer as a one-shot scan.
//! - Where a hit ends is a boundary for whatever starts right there: that
//!   candidate is judged as if the text began at it (regex `\b`, the
//!   validators' "what comes before" rules), since the hit's last byte is
//!   not part of it and is replaced anyway. Without this,
//!   `…-----END EC PRIVATE KEY-----j.doe@example.com` would leave the
//!   address for a second pass (`-` before it looks like a longer local
//!   part).
//! - A PEM armor line (`-----BEGIN `) is a boundary for everything before
//!   it: tokens whose alphabet has `-` (JWTs, API keys, a bare password
//!   value) would otherwise run into it and hide the key behind it.

pub(crate) mod validate;

use std::ops::Range;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind as AcMatchKind};
use regex_automata::meta::{self, Regex};
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, MatchKind, PatternSet};

use crate::MaskError;
use crate::config::{CustomPattern, Validator};
use crate::context::{self, Words};
use crate::entity::Entity;
use validate as v;

/// A regex match to be judged, with the bytes around it.
pub(crate) struct Cand<'h> {
    pub hay: &'h [u8],
    pub start: usize,
    pub end: usize,
    /// `hay` ends where the data ends (no more chunks will come).
    pub eof: bool,
    /// Where the previous hit ended: context words are read only after it
    /// (after masking, its words are gone, and masking twice must not
    /// change the score).
    pub floor: usize,
}

/// What masked output glued to a neighbour continues: a word.
fn glue(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._%+-@".contains(&b)
}

impl Cand<'_> {
    fn text(&self) -> &[u8] {
        &self.hay[self.start..self.end]
    }
    fn before(&self) -> Option<u8> {
        self.start.checked_sub(1).map(|i| self.hay[i])
    }
    /// `*`s right before the start that follow a word (`j***`): masked
    /// output glued on, where a second pass must not start. After a space
    /// or the start they are Markdown emphasis (`**ann@example.com**`), and
    /// the value behind them is real.
    fn glued_to_stars(&self) -> bool {
        let before = &self.hay[..self.start];
        let stars = before.iter().rev().take_while(|&&b| b == b'*').count();
        stars > 0
            && before[..before.len() - stars]
                .last()
                .is_some_and(|&b| glue(b))
    }
    /// Wrapped in Markdown emphasis, `**4111 …**`: as many `*` (1 to 3) on
    /// each side, with no word glued to either run. (Masked output glued to
    /// digits, `*0188 573 …`, has stars on one side only.)
    fn emphasized(&self) -> bool {
        let after = self.hay.get(self.end..).unwrap_or_default();
        let n = after.iter().take_while(|&&b| b == b'*').count();
        let before = &self.hay[..self.start];
        let m = before.iter().rev().take_while(|&&b| b == b'*').count();
        (1..=3).contains(&n)
            && n == m
            && !after.get(n).is_some_and(|&b| glue(b))
            && !self.glued_to_stars()
    }
    fn after(&self, n: usize) -> Option<u8> {
        self.hay.get(self.end + n).copied()
    }
    fn accept(&self, base: f32) -> Verdict {
        Verdict::Accept {
            span: self.start..self.end,
            base,
        }
    }
}

pub(crate) enum Verdict {
    Reject,
    /// The value may continue past the data seen so far (a PEM block or a
    /// JWT longer than the held-back tail): wait for more.
    Incomplete,
    /// `span` is what gets masked (it may be part of the match, e.g. only the
    /// password of a connection string); `base` is the confidence before
    /// context is taken into account.
    Accept {
        span: Range<usize>,
        base: f32,
    },
}

type Check = fn(&Cand) -> Verdict;

/// Built-in patterns, in priority order (the first pattern that matches at
/// a start is tried first). All are ASCII, compiled without Unicode so `\b`
/// is an ASCII word boundary and the lazy DFA never gives up on a byte.
/// Every pattern has a bounded length (checked at build time): see
/// [`Scanner::hold`].
const BUILTIN: &[(Entity, &str, Check)] = &[
    (
        Entity::PrivateKey,
        r"-----BEGIN (?:[A-Z0-9]{1,12} ){0,3}PRIVATE KEY(?: BLOCK)?-----",
        pem,
    ),
    (Entity::Jwt, r"\beyJ[A-Za-z0-9_\-]{8}", jwt),
    (
        Entity::BearerToken,
        r"(?i)\bbearer[ \t]{1,3}[A-Za-z0-9\-._~+/]{16,400}={0,2}",
        bearer,
    ),
    (
        Entity::AnthropicKey,
        r"\bsk-ant-[a-z0-9]{2,12}-[A-Za-z0-9_\-]{20,200}",
        token_end,
    ),
    (
        Entity::OpenaiKey,
        r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,200}",
        openai,
    ),
    (
        Entity::GithubToken,
        r"\bgh[pousr]_[A-Za-z0-9]{36}\b",
        strong,
    ),
    (
        Entity::GithubToken,
        r"\bgithub_pat_[A-Za-z0-9_]{82}\b",
        strong,
    ),
    (
        Entity::GitlabToken,
        r"\bglpat-[A-Za-z0-9_\-]{20,64}",
        token_end,
    ),
    (
        Entity::SlackToken,
        r"\bxox[abeoprs]-[A-Za-z0-9\-]{10,250}",
        token_end,
    ),
    (
        Entity::SlackToken,
        r"hooks\.slack\.com/services/[A-Za-z0-9_/]{20,120}",
        token_end,
    ),
    (
        Entity::AwsAccessKey,
        r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA)[A-Z2-7]{16}\b",
        strong,
    ),
    (
        Entity::AwsSecretKey,
        r#"(?i)aws_?secret_?(?:access_?)?key["']?[ \t]{0,3}[:=][ \t]{0,3}["']?[A-Za-z0-9/+]{40}"#,
        aws_secret,
    ),
    (Entity::GcpApiKey, r"\bAIza[0-9A-Za-z_\-]{35}", token_end),
    (
        Entity::AzureKey,
        r"(?i)AccountKey=[A-Za-z0-9+/]{86}==",
        after_eq,
    ),
    (
        Entity::AzureKey,
        r"(?i)SharedAccessKey=[A-Za-z0-9+/]{43}=",
        after_eq,
    ),
    (Entity::AzureKey, r"\bsig=[A-Za-z0-9%+/]{40,100}", after_eq),
    (
        Entity::Password,
        r"\b[A-Za-z][A-Za-z0-9+.\-]{1,20}://[^\s:/@]{0,64}:[^\s@/]{1,128}@",
        url_password,
    ),
    (
        Entity::Password,
        r#"(?i)(?:password|passwd|pwd)["']?[ \t]{0,3}[=:][ \t]{0,3}(?:"[^"\r\n]{1,128}"|'[^'\r\n]{1,128}'|[^\s;&,"'<>{}()\[\]]{1,128})"#,
        kv_password,
    ),
    (
        Entity::Email,
        r"[A-Za-z0-9][A-Za-z0-9._%+\-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?){0,4}\.[A-Za-z]{2,24}(?:\b|_)",
        email,
    ),
    (Entity::Card, r"\b[0-9](?:[ \-]?[0-9]){12,18}\b", card),
    (
        Entity::Iban,
        r"(?i)\b[A-Z]{2}[0-9]{2}(?:[ ]?[A-Z0-9]){11,30}\b",
        iban,
    ),
    (
        Entity::Nino,
        r"\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D]\b",
        nino,
    ),
    (
        Entity::Cpf,
        r"\b[0-9]{3}\.[0-9]{3}\.[0-9]{3}-[0-9]{2}\b",
        cpf,
    ),
    (
        Entity::Cnpj,
        r"\b[0-9]{2}\.[0-9]{3}\.[0-9]{3}/[0-9]{4}-[0-9]{2}\b",
        cnpj,
    ),
    (Entity::Ssn, r"\b[0-9]{3}[\- ][0-9]{2}[\- ][0-9]{4}\b", ssn),
    (
        Entity::Itin,
        r"\b9[0-9]{2}[\- ][0-9]{2}[\- ][0-9]{4}\b",
        itin,
    ),
    (
        Entity::Phone,
        r"\+[1-9](?:[ .\-/]?\(?[0-9]{1,4}\)?){2,8}",
        phone_intl,
    ),
    (
        Entity::Phone,
        r"(?:\b1[ .\-]?)?(?:\([2-9][0-9]{2}\)[ ]?|\b[2-9][0-9]{2}[ .\-])[2-9][0-9]{2}[ .\-][0-9]{4}\b",
        phone_nanp,
    ),
    (
        Entity::Phone,
        r"\b0[1-9][0-9]{1,3}[ \-][0-9]{3,4}[ \-]?[0-9]{3,4}\b",
        phone_trunk,
    ),
    (
        Entity::Phone,
        r"\b(?:[2-9][0-9]{9}|0[1-9][0-9]{8,9})\b",
        phone_bare,
    ),
    (
        Entity::Nhs,
        r"\b[0-9]{3}[ \-]?[0-9]{3}[ \-]?[0-9]{4}\b",
        nhs,
    ),
    (Entity::Cpf, r"\b[0-9]{11}\b", cpf),
    (Entity::Cnpj, r"\b[0-9]{14}\b", cnpj),
    (Entity::Ssn, r"\b[0-9]{9}\b", ssn),
    (Entity::Itin, r"\b9[0-9]{8}\b", itin),
    (Entity::AbaRouting, r"\b[0-9]{9}\b", aba),
    (
        Entity::Dob,
        r"\b(?:19|20)[0-9]{2}[\-/.][0-9]{1,2}[\-/.][0-9]{1,2}\b|\b[0-9]{1,2}[\-/.][0-9]{1,2}[\-/.](?:19|20)[0-9]{2}\b",
        dob,
    ),
    (
        Entity::Ipv4,
        r"\b(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\b",
        ipv4,
    ),
    (
        Entity::Mac,
        r"(?i)\b[0-9a-f]{2}[:\-][0-9a-f]{2}(?:[:\-][0-9a-f]{2}){4}\b",
        mac,
    ),
    (
        Entity::Mac,
        r"(?i)\b[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}\b",
        mac,
    ),
    (
        Entity::Ipv6,
        r"(?i)(?:\b[0-9a-f]{1,4}|:)(?::[0-9a-f]{0,4}){1,8}",
        ipv6,
    ),
    (
        Entity::BtcAddress,
        r"\b[13][1-9A-HJ-NP-Za-km-z]{25,34}\b",
        btc_legacy,
    ),
    (
        Entity::BtcAddress,
        r"(?i)\b(?:bc|tb)1[02-9ac-hj-np-z]{11,71}\b",
        btc_bech32,
    ),
    (Entity::EthAddress, r"\b0x[0-9a-fA-F]{40}\b", eth),
];

/// Literals that every built-in pattern without a digit or `@` contains.
/// Text with none of these, no digit and no `@` cannot match a built-in
/// pattern (except mixed-case spellings like `PassWord=`, see the crate
/// docs' known gaps).
const ANCHORS: &[&str] = &[
    "-----BEGIN",
    "eyJ",
    "sk-",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "xox",
    "hooks.slack.com",
    "AKIA",
    "ASIA",
    "ABIA",
    "ACCA",
    "AGPA",
    "AIDA",
    "AIPA",
    "ANPA",
    "ANVA",
    "APKA",
    "AROA",
    "AIza",
    "sig=",
    "://",
    // The case-insensitive patterns, in the three spellings people use
    // (lower, Capitalised, UPPER): a case-sensitive automaton is several
    // times faster than a case-insensitive one here.
    "bearer",
    "Bearer",
    "BEARER",
    "password",
    "Password",
    "PASSWORD",
    "passwd",
    "Passwd",
    "PASSWD",
    "pwd",
    "Pwd",
    "PWD",
    "aws_secret",
    "awssecret",
    "AWS_SECRET",
    "AwsSecret",
    "accountkey=",
    "AccountKey=",
    "ACCOUNTKEY=",
    "sharedaccesskey=",
    "SharedAccessKey=",
    "SHAREDACCESSKEY=",
];

/// How long the streaming masker holds back, at least: the longest built-in
/// match plus the few bytes validators look at after it. Entities longer
/// than this (PEM blocks, long JWTs) are extended by hand and make the
/// stream wait for their end, up to [`MAX_LONG_ENTITY`].
pub const MAX_ENTITY_LEN: usize = 512;

/// The longest PEM block or JWT that is masked whole; past it the rest is
/// masked as a new value (a 4096-bit RSA key in PEM is about 3.3 KB).
pub const MAX_LONG_ENTITY: usize = 16 * 1024;

/// Bytes after a match that a validator may read (e.g. "not followed by
/// `.5`" for IPv4).
const LOOKAHEAD: usize = 8;

/// Bytes before a candidate read for context words.
pub(crate) const NEAR: usize = 48;

/// A match at `start` is taken without looking at the alternatives when it
/// scores at least this.
const STRONG: f32 = 0.9;

enum PatCheck {
    Builtin(Check),
    Custom { validator: Validator, base: f32 },
}

struct Pat {
    /// Index into the engine's entity table.
    entity: usize,
    check: PatCheck,
}

pub(crate) struct Hit {
    pub entity: usize,
    pub span: Range<usize>,
}

/// What the scanner needs to know about the entities and the request.
pub(crate) struct ScanCtx<'a> {
    pub enabled: &'a [bool],
    pub threshold: f32,
    /// Context words per entity index (built-ins' keywords, custom ones').
    pub keywords: &'a [Vec<String>],
    pub field: &'a Words,
}

pub(crate) struct Scanner {
    first: Regex,
    all: Regex,
    pats: Vec<Pat>,
    anchors: Option<AhoCorasick>,
    armor: memchr::memmem::Finder<'static>,
    hold: usize,
}

/// Starts every PEM block (keys, certificates...): no entity runs into it.
const ARMOR: &[u8] = b"-----BEGIN ";

fn syntax_config() -> syntax::Config {
    // Bytes, not chars: entities are ASCII, and this keeps `\b` ASCII so the
    // lazy DFA handles it, and lets a caller scan non-UTF-8 bytes.
    syntax::Config::new().unicode(false).utf8(false)
}

impl Scanner {
    /// `custom` entities get indices after the built-ins, in order.
    pub(crate) fn new(custom: &[CustomPattern]) -> Result<Scanner, MaskError> {
        let mut sources: Vec<String> = Vec::new();
        let mut pats = Vec::new();
        for &(entity, re, check) in BUILTIN {
            sources.push(re.to_owned());
            pats.push(Pat {
                entity: entity.index(),
                check: PatCheck::Builtin(check),
            });
        }
        let mut prefilter = true;
        let mut anchors: Vec<String> = ANCHORS.iter().map(|s| (*s).to_owned()).collect();
        for (i, c) in custom.iter().enumerate() {
            let hir = parse_hir(&c.regex).map_err(|e| MaskError::Pattern {
                name: c.name.clone(),
                error: e.to_string(),
            })?;
            match hir.properties().maximum_len() {
                Some(n) if n <= MAX_ENTITY_LEN - LOOKAHEAD => {}
                _ => {
                    return Err(MaskError::Unbounded {
                        name: c.name.clone(),
                        max: MAX_ENTITY_LEN - LOOKAHEAD,
                    });
                }
            }
            match literal_prefixes(&hir) {
                Some(lits) => anchors.extend(lits),
                None => prefilter = false,
            }
            sources.push(c.regex.clone());
            pats.push(Pat {
                entity: Entity::ALL.len() + i,
                check: PatCheck::Custom {
                    validator: c.validator,
                    base: c.confidence,
                },
            });
        }
        let build = |kind: MatchKind| {
            Regex::builder()
                .syntax(syntax_config())
                .configure(
                    meta::Config::new()
                        .match_kind(kind)
                        // Many patterns with bounded repeats: give the lazy
                        // DFA room so it does not thrash on dense text.
                        .hybrid_cache_capacity(8 << 20),
                )
                .build_many(&sources)
                .map_err(|e| MaskError::Pattern {
                    name: "(built-in and custom patterns)".into(),
                    error: e.to_string(),
                })
        };
        let anchors = if prefilter {
            let ac = AhoCorasickBuilder::new()
                .match_kind(AcMatchKind::LeftmostFirst)
                .build(&anchors)
                .map_err(|e| MaskError::Pattern {
                    name: "(prefilter)".into(),
                    error: e.to_string(),
                })?;
            Some(ac)
        } else {
            None
        };
        Ok(Scanner {
            first: build(MatchKind::LeftmostFirst)?,
            all: build(MatchKind::All)?,
            pats,
            anchors,
            armor: memchr::memmem::Finder::new(ARMOR),
            hold: MAX_ENTITY_LEN,
        })
    }

    /// Bytes the streaming masker must hold back so that every hit it emits
    /// is the one a one-shot scan would make.
    pub(crate) fn hold(&self) -> usize {
        self.hold
    }

    /// False only when no pattern can match anywhere in `hay`.
    pub(crate) fn may_match(&self, hay: &[u8]) -> bool {
        let Some(ac) = &self.anchors else { return true };
        has_digit_or_at(hay) || ac.is_match(hay)
    }

    /// Scans `hay[from..]`, pushing hits in order, and returns where the
    /// caller may cut: everything before the returned offset is final. With
    /// `eof` that is `hay.len()`; without, the scan stops `hold` bytes short
    /// of the end (or at an unfinished long entity) so later bytes cannot
    /// change its answer.
    pub(crate) fn scan(
        &self,
        hay: &[u8],
        from: usize,
        floor: usize,
        eof: bool,
        cx: &ScanCtx,
        hits: &mut Vec<Hit>,
    ) -> usize {
        let mut floor = floor;
        let limit = if eof {
            hay.len()
        } else {
            hay.len().saturating_sub(self.hold).max(from)
        };
        let mut pos = from;
        let mut set = PatternSet::new(self.pats.len());
        // The first armor line after `pos` (or the end): candidates are
        // searched and judged in `hay[..armor]`, as if the text ended there.
        let mut armor = from;
        while pos < hay.len() {
            if armor <= pos {
                armor = self
                    .armor
                    .find(&hay[pos + 1..])
                    .map_or(hay.len(), |p| pos + 1 + p);
            }
            // Right after a hit, a candidate at `pos` sees no byte before it.
            let lo = if pos == floor { pos } else { 0 };
            let Some(m) = self
                .first
                .search(&Input::new(&hay[lo..armor]).range(pos - lo..))
            else {
                if armor == hay.len() {
                    break;
                }
                // Nothing before the armor line: what lies before it is final.
                pos = armor;
                continue;
            };
            let (s, e) = (lo + m.start(), lo + m.end());
            if s >= limit && !eof {
                break;
            }
            // Only the candidate at the hit's end is cut off from what
            // precedes it; one further on sees its neighbours as they are.
            let lo = if s == lo { lo } else { 0 };
            let primary = Cand {
                hay: &hay[lo..armor],
                start: s - lo,
                end: e - lo,
                eof: eof || armor < hay.len(),
                floor: floor.max(lo) - lo,
            };
            match self.judge_at(&primary, m.pattern().as_usize(), cx, &mut set) {
                Judged::Hit(mut hit, next) => {
                    hit.span = hit.span.start + lo..hit.span.end + lo;
                    floor = hit.span.end;
                    hits.push(hit);
                    pos = (next + lo).max(s + 1);
                }
                Judged::Nothing => pos = s + 1,
                Judged::Wait => return s,
            }
        }
        if eof { hay.len() } else { pos.max(limit) }
    }

    fn judge_at(&self, primary: &Cand, pid: usize, cx: &ScanCtx, set: &mut PatternSet) -> Judged {
        // Fast path: the preferred pattern validates strongly.
        let mut best: Option<(Hit, f32)> = None;
        match self.judge(primary, pid, cx) {
            Some(Scored::Wait) => return Judged::Wait,
            Some(Scored::Hit(hit, score)) if score >= STRONG.max(cx.threshold) => {
                let next = hit.span.end;
                return Judged::Hit(hit, next);
            }
            Some(Scored::Hit(hit, score)) if score >= cx.threshold => best = Some((hit, score)),
            _ => {}
        }
        // Otherwise every pattern that matches here competes on score.
        set.clear();
        let input = Input::new(primary.hay)
            .range(primary.start..)
            .anchored(Anchored::Yes);
        self.all.which_overlapping_matches(&input, set);
        for other in set.iter() {
            let other = other.as_usize();
            if other == pid || !cx.enabled[self.pats[other].entity] {
                continue;
            }
            let input = Input::new(primary.hay)
                .range(primary.start..)
                .anchored(Anchored::Pattern(regex_automata::PatternID::must(other)));
            let Some(m) = self.first.search(&input) else {
                continue;
            };
            let cand = Cand {
                end: m.end(),
                ..*primary
            };
            match self.judge(&cand, other, cx) {
                Some(Scored::Wait) => return Judged::Wait,
                Some(Scored::Hit(hit, score)) if score >= cx.threshold => {
                    let better = match &best {
                        None => true,
                        Some((b, bs)) => {
                            score > *bs || (score == *bs && hit.span.len() > b.span.len())
                        }
                    };
                    if better {
                        best = Some((hit, score));
                    }
                }
                _ => {}
            }
        }
        match best {
            Some((hit, _)) => {
                let next = hit.span.end;
                Judged::Hit(hit, next)
            }
            None => Judged::Nothing,
        }
    }

    fn judge(&self, cand: &Cand, pid: usize, cx: &ScanCtx) -> Option<Scored> {
        let pat = &self.pats[pid];
        if !cx.enabled[pat.entity] {
            return None;
        }
        let verdict = match pat.check {
            PatCheck::Builtin(check) => check(cand),
            PatCheck::Custom { validator, base } => custom(cand, validator, base),
        };
        match verdict {
            Verdict::Reject => None,
            Verdict::Incomplete => Some(Scored::Wait),
            // A hash token inside: masked output glued to its neighbours
            // (`sk-` + a hashed key + `AKIA`), which a first pass did not
            // see as one value.
            Verdict::Accept { span, .. } if holds_hash_token(&cand.hay[span.clone()]) => None,
            Verdict::Accept { span, base } => {
                let score = if base >= STRONG {
                    base
                } else {
                    context::score(
                        base,
                        &cx.keywords[pat.entity],
                        cx.field,
                        after_masked(
                            &cand.hay[cand.start.saturating_sub(NEAR).max(cand.floor)..cand.start],
                        ),
                    )
                };
                Some(Scored::Hit(
                    Hit {
                        entity: pat.entity,
                        span,
                    },
                    score,
                ))
            }
        }
    }
}

fn holds_hash_token(v: &[u8]) -> bool {
    memchr::memmem::find_iter(v, b"tok_")
        .any(|at| v.len() >= at + 20 && crate::strategy::looks_masked(&v[at..at + 20]))
}

enum Scored {
    Hit(Hit, f32),
    Wait,
}

enum Judged {
    /// A hit, and where scanning continues.
    Hit(Hit, usize),
    Nothing,
    Wait,
}

/// Any ASCII digit or `@`. Branch-free over 32-byte blocks so the compiler
/// vectorises it; this is the whole cost of text without candidates.
fn has_digit_or_at(hay: &[u8]) -> bool {
    let mut blocks = hay.chunks_exact(32);
    for block in &mut blocks {
        let mut any = 0u8;
        for &b in block {
            any |= (b.wrapping_sub(b'0') < 10) as u8 | (b == b'@') as u8;
        }
        if any != 0 {
            return true;
        }
    }
    blocks
        .remainder()
        .iter()
        .any(|&b| b.is_ascii_digit() || b == b'@')
}

/// The finite set of literal prefixes every match of `hir` starts with, if
/// there is one worth prefiltering on (each at least 2 bytes).
fn parse_hir(re: &str) -> Result<regex_syntax::hir::Hir, String> {
    regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .build()
        .parse(re)
        .map_err(|e| e.to_string())
}

fn literal_prefixes(hir: &regex_syntax::hir::Hir) -> Option<Vec<String>> {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    let seq = Extractor::new().kind(ExtractKind::Prefix).extract(hir);
    let lits = seq.literals()?;
    if lits.is_empty() || lits.iter().any(|l| l.as_bytes().len() < 2) {
        return None;
    }
    Some(
        lits.iter()
            .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned())
            .collect(),
    )
}

fn custom(c: &Cand, validator: Validator, base: f32) -> Verdict {
    let ok = match validator {
        Validator::None => true,
        Validator::Luhn => v::digits(c.text()).is_some_and(|(d, n)| n >= 2 && v::luhn(&d[..n])),
        Validator::Iban => {
            let chars: Vec<u8> = c
                .text()
                .iter()
                .copied()
                .filter(|b| b.is_ascii_alphanumeric())
                .collect();
            v::iban_mod97(&chars)
        }
    };
    if ok { c.accept(base) } else { Verdict::Reject }
}

// ---- checks -------------------------------------------------------------

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// A fixed-format credential: the regex said it all.
fn strong(c: &Cand) -> Verdict {
    c.accept(0.97)
}

/// A prefixed token whose body is a run: the run must end here, not go on
/// past the regex's upper bound.
fn token_end(c: &Cand) -> Verdict {
    if c.after(0).is_some_and(is_token_byte) || masked_after(c.hay, c.end) {
        return Verdict::Reject;
    }
    c.accept(0.95)
}

fn openai(c: &Cand) -> Verdict {
    let t = c.text();
    if t.starts_with(b"sk-ant-")
        || c.after(0).is_some_and(is_token_byte)
        || masked_after(c.hay, c.end)
    {
        return Verdict::Reject;
    }
    // Real keys are random base62: digits and both cases. This keeps
    // `sk-learn-feature-branch-name` and similar identifiers out.
    let body = &t[3..];
    let digits = body.iter().filter(|b| b.is_ascii_digit()).count();
    let upper = body.iter().filter(|b| b.is_ascii_uppercase()).count();
    let lower = body.iter().filter(|b| b.is_ascii_lowercase()).count();
    if digits >= 2 && upper >= 2 && lower >= 2 {
        c.accept(0.93)
    } else {
        Verdict::Reject
    }
}

/// Everything after the first `=` of the match (the key, not its label).
fn after_eq(c: &Cand) -> Verdict {
    if c.after(0)
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        || masked_after(c.hay, c.end)
    {
        return Verdict::Reject;
    }
    match c.text().iter().position(|&b| b == b'=') {
        Some(p) => Verdict::Accept {
            span: c.start + p + 1..c.end,
            base: 0.95,
        },
        None => Verdict::Reject,
    }
}

fn aws_secret(c: &Cand) -> Verdict {
    if c.after(0)
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        || masked_after(c.hay, c.end)
    {
        return Verdict::Reject;
    }
    Verdict::Accept {
        span: c.end - 40..c.end,
        base: 0.95,
    }
}

fn bearer(c: &Cand) -> Verdict {
    let t = c.text();
    if c.after(0).is_some_and(|b| is_token_byte(b) || b == b'.') || masked_after(c.hay, c.end) {
        return Verdict::Reject;
    }
    let skip = 6 + t[6..]
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let tok = &t[skip..];
    if tok.starts_with(b"[REDACTED") || tok.iter().all(|&b| b == b'*') || tok.starts_with(b"tok_") {
        return Verdict::Reject;
    }
    Verdict::Accept {
        span: c.start + skip..c.end,
        base: 0.93,
    }
}

/// A placeholder or an already-masked value is not a password.
fn placeholder(v: &[u8]) -> bool {
    let lower: Vec<u8> = v.iter().map(u8::to_ascii_lowercase).collect();
    v.is_empty()
        || v.iter()
            .all(|&b| b == b'*' || b == b'x' || b == b'X' || b == b'.')
        || v.starts_with(b"[REDACTED")
        || crate::strategy::looks_masked(v)
        // A PEM armor line, masked or not: the key is its own hit, and the
        // value before its armor was empty.
        || v.starts_with(b"-----")
        || v.starts_with(b"$")
        || v.starts_with(b"%")
        || v.starts_with(b"{")
        || v.starts_with(b"<")
        || v == b"?"
        || matches!(
            lower.as_slice(),
            b"null"
                | b"none"
                | b"true"
                | b"false"
                | b"required"
                | b"optional"
                | b"string"
                | b"password"
                | b"changeme"
                | b"nil"
                | b"undefined"
                | b"empty"
        )
}

fn url_password(c: &Cand) -> Verdict {
    let t = c.text();
    let Some(scheme_end) = t.windows(3).position(|w| w == b"://") else {
        return Verdict::Reject;
    };
    let user_start = scheme_end + 3;
    let Some(colon) = t[user_start..].iter().position(|&b| b == b':') else {
        return Verdict::Reject;
    };
    let pw_start = user_start + colon + 1;
    let pw_end = t.len() - 1; // the '@'
    if pw_start >= pw_end || placeholder(&t[pw_start..pw_end]) {
        return Verdict::Reject;
    }
    Verdict::Accept {
        span: c.start + pw_start..c.start + pw_end,
        base: 0.93,
    }
}

fn kv_password(c: &Cand) -> Verdict {
    let t = c.text();
    // `db_password=` yes, `xpassword=` (inside another word) no.
    if c.before().is_some_and(|b| b.is_ascii_alphanumeric()) {
        return Verdict::Reject;
    }
    let Some(sep) = t.iter().position(|&b| b == b'=' || b == b':') else {
        return Verdict::Reject;
    };
    let mut a = sep + 1;
    while a < t.len() && (t[a] == b' ' || t[a] == b'\t') {
        a += 1;
    }
    let mut b = t.len();
    let mut end = c.end;
    if a < b && (t[a] == b'"' || t[a] == b'\'') {
        a += 1;
        b -= 1;
    } else {
        // A bare value longer than the regex's 128 bytes: mask the rest of
        // the run too (up to a bound that stays inside the stream's hold),
        // or its tail would be left for a second pass to find.
        let bound = (c.start + 400).min(c.hay.len());
        let more = c.hay[end..bound]
            .iter()
            .take_while(|&&b| !b.is_ascii_whitespace() && !b";&,\"'<>{}()[]".contains(&b))
            .count();
        end += more;
        if end == c.hay.len() && !c.eof && bound == c.hay.len() {
            return Verdict::Incomplete;
        }
        b = end - c.start;
    }
    if a >= b || placeholder(&c.hay[c.start + a..c.start + b]) {
        return Verdict::Reject;
    }
    Verdict::Accept {
        span: c.start + a..c.start + b,
        base: 0.9,
    }
}

/// BEGIN line found; the block runs to its END line. Without one in view:
/// wait for more (stream), or mask to the end of the base64 body.
fn pem(c: &Cand) -> Verdict {
    let cap = (c.start + MAX_LONG_ENTITY).min(c.hay.len());
    let body_start = c.end;
    let window = &c.hay[body_start..cap];
    let end = match find(window, b"-----END ") {
        Some(p) => {
            let after = body_start + p + 9;
            match find(&c.hay[after..cap], b"-----") {
                Some(q) => after + q + 5,
                None if !c.eof && cap == c.hay.len() && cap < c.start + MAX_LONG_ENTITY => {
                    return Verdict::Incomplete;
                }
                None => cap,
            }
        }
        None if !c.eof && cap == c.hay.len() && cap < c.start + MAX_LONG_ENTITY => {
            return Verdict::Incomplete;
        }
        None => {
            let run = window
                .iter()
                .take_while(|&&b| b.is_ascii_alphanumeric() || b"+/=\r\n \t:,".contains(&b))
                .count();
            body_start + run
        }
    };
    // A masked block (body all `*`) is not a key any more.
    let b64 = c.hay[body_start..end]
        .iter()
        .filter(|b| b.is_ascii_alphanumeric())
        .count();
    if b64 < 32 {
        return Verdict::Reject;
    }
    Verdict::Accept {
        span: c.start..end,
        base: 0.99,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `eyJ…` found; read header.payload.signature by hand (a JWT can be
/// kilobytes long, more than the regex may span).
fn jwt(c: &Cand) -> Verdict {
    let hay = c.hay;
    let cap = (c.start + MAX_LONG_ENTITY).min(hay.len());
    let b64 = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    let run = |from: usize| from + hay[from..cap].iter().take_while(|&&b| b64(b)).count();
    let h_end = run(c.start);
    let at_end = |i: usize| i == hay.len() && !c.eof && cap < c.start + MAX_LONG_ENTITY;
    if at_end(h_end) {
        return Verdict::Incomplete;
    }
    if hay.get(h_end) != Some(&b'.') {
        return Verdict::Reject;
    }
    let p_end = run(h_end + 1);
    if at_end(p_end) {
        return Verdict::Incomplete;
    }
    if p_end - h_end < 3 || hay.get(p_end) != Some(&b'.') {
        return Verdict::Reject;
    }
    let s_end = run(p_end + 1);
    if at_end(s_end) {
        return Verdict::Incomplete;
    }
    if !v::jwt_header(&hay[c.start..h_end]) {
        return Verdict::Reject;
    }
    Verdict::Accept {
        span: c.start..s_end,
        base: 0.97,
    }
}

fn email(c: &Cand) -> Verdict {
    // `_ann@example.com_` (Markdown emphasis): `_` is a word character, so
    // the pattern takes it in place of a boundary; the address ends before.
    if c.text().ends_with(b"_") {
        return email(&Cand {
            end: c.end - 1,
            ..*c
        });
    }
    let t = c.text();
    if c.before()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b"._%+-".contains(&b))
        || c.glued_to_stars()
    {
        return Verdict::Reject;
    }
    let Some(at) = t.iter().position(|&b| b == b'@') else {
        return Verdict::Reject;
    };
    let local = &t[..at];
    // A hash token glued to the local part is a masked neighbour, not an
    // address (or a second pass would mask what the first left).
    let glued = local.windows(20).any(crate::strategy::looks_masked);
    if glued || local.ends_with(b".") || local.windows(2).any(|w| w == b"..") {
        return Verdict::Reject;
    }
    let tld = t.rsplit(|&b| b == b'.').next().unwrap_or_default();
    let tld: Vec<u8> = tld.iter().map(u8::to_ascii_lowercase).collect();
    // `icon@2x.png`, `logo@3x.webp`: asset names, not addresses.
    if matches!(
        tld.as_slice(),
        b"png"
            | b"jpg"
            | b"jpeg"
            | b"gif"
            | b"svg"
            | b"webp"
            | b"ico"
            | b"bmp"
            | b"js"
            | b"css"
            | b"ts"
            | b"map"
    ) {
        return Verdict::Reject;
    }
    // Followed by more domain characters: the regex stopped at its bound.
    if c.after(0).is_some_and(|b| {
        b == b'-' || (b == b'.' && c.after(1).is_some_and(|n| n.is_ascii_alphanumeric()))
    }) {
        return Verdict::Reject;
    }
    c.accept(0.95)
}

// Neighbour checks below must give the same answer after a neighbour has
// been masked, or masking twice would mask more (not idempotent). So what
// the strategies write — `*`, `[REDACTED:…]`, `tok_` + 16 hex — counts as
// the digits it replaced.

/// The part of a context window after the last masked output in it (see
/// [`Cand::floor`]: the same words must count before and after masking).
fn after_masked(w: &[u8]) -> &[u8] {
    let mut cut = w.iter().rposition(|&b| b == b'*').map_or(0, |p| p + 1);
    let mut i = 0;
    while let Some(p) = find(&w[i..], b"[REDACTED:") {
        let at = i + p;
        if let Some(q) = w[at..].iter().position(|&b| b == b']') {
            cut = cut.max(at + q + 1);
        }
        i = at + 1;
    }
    let mut i = 0;
    while let Some(p) = find(&w[i..], b"tok_") {
        let at = i + p;
        if at + 20 <= w.len() && crate::strategy::looks_masked(&w[at..at + 20]) {
            cut = cut.max(at + 20);
        }
        i = at + 1;
    }
    &w[cut.min(w.len())..]
}

/// `hay[..end]` ends with masked output.
fn masked_before(hay: &[u8], end: usize) -> bool {
    let h = &hay[..end];
    (h.ends_with(b"*") && !bold_label(h))
        || (h.ends_with(b"]") && {
            let from = end.saturating_sub(48);
            find(&hay[from..end], b"[REDACTED:").is_some()
        })
        || (end >= 20 && crate::strategy::looks_masked(&h[end - 20..]))
}

/// `h` ends with a Markdown bold label, `**Card:**` (its stars are not
/// masked output).
fn bold_label(h: &[u8]) -> bool {
    let Some(rest) = h.strip_suffix(b":**") else {
        return false;
    };
    let word = rest
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_alphabetic() || **b == b' ')
        .count();
    (1..=30).contains(&word) && rest[..rest.len() - word].ends_with(b"**")
}

/// `hay[start..]` starts with masked output.
fn masked_after(hay: &[u8], start: usize) -> bool {
    let h = &hay[start.min(hay.len())..];
    h.starts_with(b"*") || h.starts_with(b"[REDACTED:") || h.starts_with(b"tok_")
}

fn digitish_before(hay: &[u8], end: usize) -> bool {
    end > 0 && (hay[end - 1].is_ascii_digit() || masked_before(hay, end))
}

fn digitish_after(hay: &[u8], start: usize) -> bool {
    hay.get(start).is_some_and(u8::is_ascii_digit) || masked_after(hay, start)
}

/// The match continues a chain of space-separated digit groups
/// (`… 4593 0873 5955 440`, the tail of a longer number), so it is a piece
/// of something else.
fn group_tail(c: &Cand) -> bool {
    c.before() == Some(b' ') && digitish_before(c.hay, c.start - 1)
}

/// The match follows a 4-character group with a digit (`FR18 5269 4973 …`):
/// the middle of a longer grouped number such as an IBAN.
fn after_group4(c: &Cand) -> bool {
    if c.before() != Some(b' ') {
        return false;
    }
    if masked_before(c.hay, c.start - 1) {
        return true;
    }
    let Some(g) = c.start.checked_sub(5) else {
        return false;
    };
    let group = &c.hay[g..c.start - 1];
    // `*` counts as what it replaced: `**78` is a group a first pass saw.
    group
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'*')
        && group.iter().any(|&b| b.is_ascii_digit() || b == b'*')
        && (g == 0 || !c.hay[g - 1].is_ascii_alphanumeric())
}

/// Digits run on past the match (`1234-5678-…` longer than the entity).
fn digit_joined(c: &Cand) -> bool {
    let sep = |b: Option<u8>| b.is_some_and(|b| b"-./".contains(&b));
    (sep(c.after(0)) && digitish_after(c.hay, c.end + 1))
        || (sep(c.before()) && digitish_before(c.hay, c.start - 1))
        // Glued to masked output: the rest of a value masked with `mask`
        // or `partial`, which a first pass never started inside.
        || ((c.before() == Some(b'*') || c.after(0) == Some(b'*')) && !c.emphasized())
}

/// Tries the match, then shorter versions of it ending before a space
/// (the greedy regex may have run on into the next number:
/// `3473-381314-58248 664-18-4817`), longest first.
fn shrinking(c: &Cand, check: impl Fn(&Cand) -> Verdict) -> Verdict {
    let t = c.text();
    let mut end = t.len();
    loop {
        let sub = Cand {
            end: c.start + end,
            ..*c
        };
        if let v @ (Verdict::Accept { .. } | Verdict::Incomplete) = check(&sub) {
            return v;
        }
        match t[..end].iter().rposition(|&b| b == b' ') {
            Some(p) if p > 0 && t[p - 1].is_ascii_digit() => end = p,
            _ => return Verdict::Reject,
        }
    }
}

fn card(c: &Cand) -> Verdict {
    shrinking(c, |c| {
        let t = c.text();
        let Some((d, n)) = v::digits(t) else {
            return Verdict::Reject;
        };
        let d = &d[..n];
        if !(13..=19).contains(&n)
            || after_group4(c)
            || digit_joined(c)
            || !v::card_grouping(t)
            || !v::luhn(d)
            || !v::card_issuer(d)
        {
            return Verdict::Reject;
        }
        c.accept(0.95)
    })
}

fn iban(c: &Cand) -> Verdict {
    let t = c.text();
    // Glued to `*`: the kept tail of a masked token (`partial:4` of
    // `glpat-…DE64` before ` 7671 3767 …`), which a first pass saw as one.
    if c.glued_to_stars() {
        return Verdict::Reject;
    }
    let Some(len) = v::iban_len(&t[..2]) else {
        return Verdict::Reject;
    };
    // Take exactly the country's length (the regex may have run on into
    // the next word), then require a word boundary.
    let mut chars = [0u8; 34];
    let mut n = 0;
    let mut end = 0;
    for (i, &b) in t.iter().enumerate() {
        if b.is_ascii_alphanumeric() {
            if n == len {
                break;
            }
            chars[n] = b;
            n += 1;
            end = i + 1;
        }
    }
    if n != len
        || c.hay
            .get(c.start + end)
            .is_some_and(|b| b.is_ascii_alphanumeric())
    {
        return Verdict::Reject;
    }
    if !v::iban_mod97(&chars[..n]) {
        return Verdict::Reject;
    }
    Verdict::Accept {
        span: c.start..c.start + end,
        base: 0.97,
    }
}

fn nino(c: &Cand) -> Verdict {
    // `JS 44 43 57 Aj.doe@x.io` masks the address from `A` on, keeping
    // the `A`: glued to that `*`, the letter is not a NINO's suffix.
    if !v::nino_prefix(c.text()) || masked_after(c.hay, c.end) {
        return Verdict::Reject;
    }
    c.accept(0.85)
}

fn digits_of(c: &Cand) -> Option<([u8; 32], usize)> {
    v::digits(c.text())
}

fn bare(c: &Cand) -> bool {
    c.text().iter().all(u8::is_ascii_digit)
}

fn cpf(c: &Cand) -> Verdict {
    match digits_of(c) {
        Some((d, 11)) if !digit_joined(c) && v::cpf(&d[..11]) => {
            c.accept(if bare(c) { 0.3 } else { 0.9 })
        }
        _ => Verdict::Reject,
    }
}

fn cnpj(c: &Cand) -> Verdict {
    match digits_of(c) {
        Some((d, 14)) if !digit_joined(c) && v::cnpj(&d[..14]) => {
            c.accept(if bare(c) { 0.35 } else { 0.9 })
        }
        _ => Verdict::Reject,
    }
}

fn same_separators(t: &[u8]) -> bool {
    let mut seps = t.iter().filter(|b| !b.is_ascii_digit());
    match seps.next() {
        None => true,
        Some(first) => seps.all(|s| s == first),
    }
}

fn ssn(c: &Cand) -> Verdict {
    let t = c.text();
    match digits_of(c) {
        Some((d, 9)) if same_separators(t) && !digit_joined(c) && v::ssn(&d[..9]) => {
            c.accept(if bare(c) {
                0.3
            } else if t.contains(&b'-') {
                0.7
            } else {
                0.55
            })
        }
        _ => Verdict::Reject,
    }
}

fn itin(c: &Cand) -> Verdict {
    let t = c.text();
    match digits_of(c) {
        Some((d, 9)) if same_separators(t) && !digit_joined(c) && v::itin(&d[..9]) => {
            c.accept(if bare(c) {
                0.3
            } else if t.contains(&b'-') {
                0.7
            } else {
                0.55
            })
        }
        _ => Verdict::Reject,
    }
}

fn aba(c: &Cand) -> Verdict {
    match digits_of(c) {
        Some((d, 9)) if v::aba(&d[..9]) => c.accept(0.2),
        _ => Verdict::Reject,
    }
}

fn nhs(c: &Cand) -> Verdict {
    let t = c.text();
    match digits_of(c) {
        Some((d, 10))
            if same_separators(t) && !digit_joined(c) && !group_tail(c) && v::nhs(&d[..10]) =>
        {
            c.accept(if bare(c) { 0.2 } else { 0.35 })
        }
        _ => Verdict::Reject,
    }
}

/// `20231114`, `2023-11-14`: a date or a build stamp, not a phone number.
fn date_like(d: &[u8]) -> bool {
    if d.len() < 8 {
        return false;
    }
    let y = d[..4].iter().fold(0u32, |a, &x| a * 10 + x as u32);
    let m = d[4] as u32 * 10 + d[5] as u32;
    let day = d[6] as u32 * 10 + d[7] as u32;
    (1970..=2099).contains(&y) && (1..=12).contains(&m) && (1..=31).contains(&day)
}

fn phone_intl(c: &Cand) -> Verdict {
    if c.before()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'+')
        || masked_before(c.hay, c.start)
    {
        return Verdict::Reject;
    }
    shrinking(c, |c| {
        let t = c.text();
        // A last group that runs on with `:`, or with `-./` and a letter,
        // starts something else (an IPv6 or MAC address, a time):
        // `+4053395016 2001:db8::1` ends before ` 2001`.
        let runs_on = c.after(0) == Some(b':')
            || (c.after(0).is_some_and(|b| b"-./".contains(&b))
                && c.after(1).is_some_and(|b| b.is_ascii_alphanumeric()));
        if digitish_after(c.hay, c.end)
            || c.after(0).is_some_and(|b| b.is_ascii_alphanumeric())
            || runs_on
        {
            return Verdict::Reject;
        }
        let opens = t.iter().filter(|&&b| b == b'(').count();
        let closes = t.iter().filter(|&&b| b == b')').count();
        match digits_of(c) {
            Some((_, n))
                if (8..=15).contains(&n) && opens == closes && opens <= 1 && !t.ends_with(b"(") =>
            {
                c.accept(0.8)
            }
            _ => Verdict::Reject,
        }
    })
}

fn phone_nanp(c: &Cand) -> Verdict {
    let t = c.text();
    if digit_joined(c) || group_tail(c) || digitish_before(c.hay, c.start) {
        return Verdict::Reject;
    }
    let Some((d, n)) = digits_of(c) else {
        return Verdict::Reject;
    };
    let d = if n == 11 { &d[1..11] } else { &d[..n] };
    // Area code and exchange: N11 codes are services, not numbers.
    if d.len() != 10 || (d[1] == 1 && d[2] == 1) || (d[4] == 1 && d[5] == 1) {
        return Verdict::Reject;
    }
    // Spaces or dots alone are weaker: NHS numbers are written 3-3-4 too.
    c.accept(if t.contains(&b'(') || t.contains(&b'-') {
        0.7
    } else {
        0.6
    })
}

fn phone_trunk(c: &Cand) -> Verdict {
    match digits_of(c) {
        Some((d, n))
            if (10..=11).contains(&n)
                && !date_like(&d[..n])
                && !digit_joined(c)
                && !group_tail(c) =>
        {
            c.accept(0.55)
        }
        _ => Verdict::Reject,
    }
}

fn phone_bare(c: &Cand) -> Verdict {
    match digits_of(c) {
        Some((d, n)) if !date_like(&d[..n]) => c.accept(0.25),
        _ => Verdict::Reject,
    }
}

fn dob(c: &Cand) -> Verdict {
    let t = c.text();
    if !same_separators(t) || digit_joined(c) {
        return Verdict::Reject;
    }
    let mut parts = [0u32; 3];
    for (i, p) in t.split(|b| !b.is_ascii_digit()).take(3).enumerate() {
        parts[i] = p.iter().fold(0, |a, &x| a * 10 + (x - b'0') as u32);
    }
    let ok = if parts[0] >= 1900 {
        v::date(parts[0], parts[1], parts[2])
    } else {
        v::date(parts[2], parts[1], parts[0]) || v::date(parts[2], parts[0], parts[1])
    };
    if ok { c.accept(0.2) } else { Verdict::Reject }
}

fn ipv4(c: &Cand) -> Verdict {
    // Part of a longer dotted run (`1.2.3.4.5`, an OID): not an address.
    if digit_joined(c) {
        return Verdict::Reject;
    }
    c.accept(0.7)
}

fn mac(c: &Cand) -> Verdict {
    let t = c.text();
    let seps: Vec<u8> = t
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_hexdigit())
        .collect();
    if seps.windows(2).any(|w| w[0] != w[1])
        || c.after(0).is_some_and(|b| b == b':' || b == b'-')
        || masked_after(c.hay, c.end)
        || masked_before(c.hay, c.start)
    {
        return Verdict::Reject;
    }
    c.accept(0.85)
}

fn ipv6(c: &Cand) -> Verdict {
    let mut t = c.text();
    while t.len() > 2 && t.ends_with(b":") && !t.ends_with(b"::") {
        t = &t[..t.len() - 1];
    }
    // Whole tokens only: the regex caps groups at 4 hex digits, so
    // `a600917` must not yield `a600`.
    if c.before()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b':' || b == b'.')
        || c.after(0)
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        || masked_before(c.hay, c.start)
        || masked_after(c.hay, c.end)
    {
        return Verdict::Reject;
    }
    let Ok(s) = std::str::from_utf8(t) else {
        return Verdict::Reject;
    };
    let groups = s.split(':').filter(|g| !g.is_empty()).count();
    if groups < 3 || s.parse::<std::net::Ipv6Addr>().is_err() {
        return Verdict::Reject;
    }
    Verdict::Accept {
        span: c.start..c.start + t.len(),
        base: 0.85,
    }
}

fn btc_legacy(c: &Cand) -> Verdict {
    if v::base58check(c.text()) {
        c.accept(0.95)
    } else {
        Verdict::Reject
    }
}

fn btc_bech32(c: &Cand) -> Verdict {
    if v::bech32(c.text()) {
        c.accept(0.95)
    } else {
        Verdict::Reject
    }
}

fn eth(c: &Cand) -> Verdict {
    c.accept(0.85)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_pattern_is_bounded() {
        for &(entity, re, _) in BUILTIN {
            let hir = parse_hir(re).unwrap();
            let max = hir.properties().maximum_len();
            assert!(
                max.is_some_and(|m| m + LOOKAHEAD <= MAX_ENTITY_LEN),
                "{entity:?} {re}: max len {max:?}"
            );
        }
    }
}
