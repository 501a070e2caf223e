//! Which rules apply to one reply: config defaults, the target's overrides,
//! then the policy decision's `mask` list, all in one grammar (see the
//! crate docs).

use std::sync::Arc;

use crate::MaskError;
use crate::engine::{FieldContext, FieldKind};
use crate::strategy::Strategy;

/// The rules in force for one reply (or one request's worth of replies).
/// Made once per decision by [`crate::Engine::selection`]; cheap to share.
#[derive(Clone, Debug)]
pub struct Selection {
    /// Per entity index: is its detector on?
    pub(crate) enabled: Vec<bool>,
    pub(crate) strategy: Vec<Strategy>,
    pub(crate) threshold: f32,
    pub(crate) rules: Vec<FieldRule>,
}

impl Selection {
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    pub(crate) fn any_detector(&self) -> bool {
        self.enabled.iter().any(|&e| e)
    }
}

/// A rule that masks a whole value by where it is, whatever it contains.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct FieldRule {
    pub kind: RuleKind,
    /// Lower-cased glob (`*`, `?`).
    pub glob: String,
    pub strategy: Strategy,
    /// The item as written, for findings (`column:users.ssn`).
    pub label: Arc<str>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RuleKind {
    Column,
    Field,
    Header,
    Name,
}

/// One parsed item of the grammar.
pub(crate) enum Item {
    /// An entity or group name: turn on (with an optional strategy) or off.
    Entities {
        name: String,
        on: bool,
        strategy: Option<Strategy>,
    },
    Rule {
        rule: FieldRule,
        on: bool,
    },
}

pub(crate) fn parse_item(item: &str) -> Result<Item, MaskError> {
    let bad = |reason: &str| MaskError::Select {
        item: item.to_owned(),
        reason: reason.to_owned(),
    };
    let s = item.trim();
    let (on, s) = match s.strip_prefix('-') {
        Some(rest) => (false, rest),
        None => (true, s),
    };
    // The strategy follows the last `=` (a JSON path never holds one).
    let (sel, strategy) = match s.rsplit_once('=') {
        Some((sel, st)) => (sel, Some(st.parse::<Strategy>()?)),
        None => (s, None),
    };
    if sel.is_empty() {
        return Err(bad("empty selector"));
    }
    let rule = |kind, glob: &str| {
        if glob.is_empty() {
            return Err(bad("empty name after the prefix"));
        }
        Ok(Item::Rule {
            rule: FieldRule {
                kind,
                glob: glob.to_ascii_lowercase(),
                strategy: strategy.unwrap_or(Strategy::Redact),
                label: Arc::from(sel),
            },
            on,
        })
    };
    if let Some(g) = sel.strip_prefix("column:") {
        return rule(RuleKind::Column, g);
    }
    if let Some(g) = sel.strip_prefix("field:") {
        return rule(RuleKind::Field, g);
    }
    if let Some(g) = sel.strip_prefix("header:") {
        return rule(RuleKind::Header, g);
    }
    if let Some(g) = sel.strip_prefix("name:") {
        return rule(RuleKind::Name, g);
    }
    if !sel
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(bad(
            "not an entity name nor column:/field:/header:/name: selector",
        ));
    }
    Ok(Item::Entities {
        name: sel.to_owned(),
        on,
        strategy,
    })
}

impl FieldRule {
    pub(crate) fn matches(&self, ctx: &FieldContext) -> bool {
        let name = ctx.name.map(str::as_bytes);
        let path = ctx.path.map(str::as_bytes);
        let target = match (self.kind, ctx.kind) {
            (RuleKind::Column, FieldKind::Column) if self.glob.contains('.') => path,
            (RuleKind::Column, FieldKind::Column) => name,
            (RuleKind::Field, FieldKind::Field) if self.glob.starts_with('$') => path,
            (RuleKind::Field, FieldKind::Field) => name,
            (RuleKind::Header, FieldKind::Header) => name,
            (RuleKind::Name, k) if k != FieldKind::Text => name,
            _ => None,
        };
        target.is_some_and(|t| glob(self.glob.as_bytes(), t))
    }
}

/// Case-insensitive glob: `*` any run (dots included), `?` one byte.
pub(crate) fn glob(pat: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == text[t].to_ascii_lowercase()) {
            p += 1;
            t += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob(b"users.ssn", b"USERS.SSN"));
        assert!(glob(b"*.ssn", b"public.users.ssn"));
        assert!(glob(b"$.items[*].card", b"$.items[3].card"));
        assert!(!glob(b"ssn", b"ssn_last4"));
        assert!(glob(b"ssn*", b"ssn_last4"));
    }

    #[test]
    fn grammar() {
        assert!(matches!(
            parse_item("email"),
            Ok(Item::Entities {
                on: true,
                strategy: None,
                ..
            })
        ));
        assert!(matches!(
            parse_item("-ipv4"),
            Ok(Item::Entities { on: false, .. })
        ));
        assert!(matches!(
            parse_item("card=partial:4"),
            Ok(Item::Entities {
                strategy: Some(Strategy::Partial { keep_last: 4 }),
                ..
            })
        ));
        let Ok(Item::Rule { rule, .. }) = parse_item("column:users.ssn=null") else {
            panic!()
        };
        assert_eq!(rule.kind, RuleKind::Column);
        assert_eq!(rule.strategy, Strategy::Null);
        assert!(parse_item("Email!").is_err());
        assert!(parse_item("email=sparkle").is_err());
        assert!(parse_item("column:").is_err());
    }
}
