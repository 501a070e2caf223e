//! What a bundle can read and call, from its tokens (regorus's own lexer, so
//! comments and strings are never mistaken for code). Two answers:
//!
//! - the `input` paths it reads, for the decision cache's key
//!   (`cache.rs`): `input.request.sql` reads that field; `input.x[k]`,
//!   `some v in input.x`, `import input.x as y` read all of `input.x`; a bare
//!   `input` (`walk(input)`, `object.get(input, …)`, `input[k]`) reads all
//!   of it. A `with input… as` target is written, not read. A call of a
//!   builtin whose answer is not a function of its arguments (the clock,
//!   randomness, the network) makes the bundle uncacheable.
//! - whether an evaluation is bounded by the VM's limits alone, so it may
//!   run on the caller's thread (`eval.rs`): only when every builtin it
//!   calls costs time linear in the size of its arguments. A builtin whose
//!   work comes from a number (`sprintf` widths), the network, or anything
//!   not known to be linear sends decisions to the watchdog's workers.
//!
//! Every file of the bundle is scanned, test files too (they may define
//! rules the decision uses). Deliberately coarse: reading too much only
//! costs cache hits, calling something unknown only costs the thread hop.

use regorus::{
    Value,
    unstable::{BUILTINS, Lexer, Token, TokenKind},
};

use super::bundle::SourceFile;

/// Builtins whose answer is not a function of their arguments.
const IMPURE: [&str; 8] = [
    "time.now_ns",
    "rand.intn",
    "uuid.rfc4122",
    "uuid.parse",
    "http.send",
    "opa.runtime",
    "net.lookup_ip_addr",
    "trace",
];

/// Builtins whose time is linear in the size of their arguments (and whose
/// result is no bigger than that), so the VM's timer, checked between
/// instructions, can overrun its budget by at most a constant factor.
/// `numbers.range*` are agentguard's bounded versions (limits.rs);
/// `sprintf` is checked per call (literal format, small widths).
const BOUNDED: &[&str] = &[
    "abs",
    "array.concat",
    "array.reverse",
    "array.slice",
    "base64.decode",
    "base64.encode",
    "ceil",
    "concat",
    "contains",
    "count",
    "endswith",
    "floor",
    "format_int",
    "indexof",
    "intersection",
    "is_array",
    "is_boolean",
    "is_null",
    "is_number",
    "is_object",
    "is_set",
    "is_string",
    "lower",
    "max",
    "min",
    "net.cidr_contains",
    "numbers.range",
    "numbers.range_step",
    "object.get",
    "object.keys",
    "object.remove",
    "object.union",
    "product",
    "regex.match",
    "round",
    "sort",
    "split",
    "startswith",
    "substring",
    "sum",
    "to_number",
    "trim",
    "trim_left",
    "trim_prefix",
    "trim_right",
    "trim_space",
    "trim_suffix",
    "type_name",
    "union",
    "upper",
];

/// Widest `sprintf` field a bounded evaluation may ask for.
const MAX_SPRINTF_WIDTH: u64 = 1000;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reads {
    /// `input` paths read, shortest first, none a prefix of another; `[]`
    /// (one empty path) means all of `input`.
    pub paths: Vec<Vec<String>>,
    /// Why decisions must not be cached at all.
    pub uncacheable: Option<String>,
    /// Why an evaluation is not bounded by the VM's limits alone.
    pub unbounded: Option<String>,
}

impl Reads {
    /// The paths as regorus keys, for lookups that allocate nothing.
    pub fn key_paths(&self) -> Vec<Vec<Value>> {
        self.paths
            .iter()
            .map(|p| p.iter().map(|s| Value::from(s.as_str())).collect())
            .collect()
    }

    /// `request.sql, target.name` (or `all of input`), for status and logs.
    pub fn describe(&self) -> String {
        if self.paths.iter().any(Vec::is_empty) {
            return "all of input".into();
        }
        if self.paths.is_empty() {
            return "nothing from input".into();
        }
        self.paths
            .iter()
            .map(|p| p.join("."))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub fn scan(files: &[SourceFile]) -> Reads {
    let mut reads = Reads::default();
    for f in files.iter().filter(|f| f.name.ends_with(".rego")) {
        let tokens = match tokens(f) {
            Ok(t) => t,
            Err(e) => {
                let why = format!("{}: cannot scan: {e}", f.name);
                reads.paths.push(Vec::new());
                reads.uncacheable.get_or_insert_with(|| why.clone());
                reads.unbounded.get_or_insert(why);
                continue;
            }
        };
        scan_tokens(&f.name, &tokens, &mut reads);
    }
    reads.paths.sort();
    reads.paths.dedup();
    // A path under another read path adds nothing to the key.
    let all = reads.paths.clone();
    reads
        .paths
        .retain(|p| !all.iter().any(|q| q.len() < p.len() && p.starts_with(q)));
    reads
}

fn tokens(f: &SourceFile) -> anyhow::Result<Vec<Token>> {
    let source = regorus::Source::from_contents(f.name.clone(), f.text.clone())?;
    let mut lexer = Lexer::new(&source);
    let mut out = Vec::new();
    loop {
        let t = lexer.next_token()?;
        if t.0 == TokenKind::Eof {
            return Ok(out);
        }
        out.push(t);
    }
}

fn is(t: Option<&Token>, kind: &TokenKind, text: &str) -> bool {
    t.is_some_and(|t| t.0 == *kind && t.1.text() == text)
}

/// A string literal usable as a key (no escapes to interpret).
fn literal(t: Option<&Token>) -> Option<&str> {
    let t = t?;
    matches!(t.0, TokenKind::String | TokenKind::RawString)
        .then(|| t.1.text())
        .filter(|s| !s.contains('\\'))
}

fn scan_tokens(file: &str, tokens: &[Token], reads: &mut Reads) {
    for (i, t) in tokens.iter().enumerate() {
        if t.0 != TokenKind::Ident {
            continue;
        }
        let prev = i.checked_sub(1).and_then(|p| tokens.get(p));
        // A field name (`x.input`), not a root.
        if is(prev, &TokenKind::Symbol, ".") {
            continue;
        }
        if t.1.text() == "input" {
            if is(prev, &TokenKind::Ident, "with") {
                continue;
            }
            reads.paths.push(input_path(&tokens[i + 1..]));
            continue;
        }
        // A dotted name called as a function.
        let mut name = t.1.text().to_owned();
        let mut j = i + 1;
        while is(tokens.get(j), &TokenKind::Symbol, ".")
            && tokens.get(j + 1).is_some_and(|n| n.0 == TokenKind::Ident)
        {
            name.push('.');
            name.push_str(tokens[j + 1].1.text());
            j += 2;
        }
        if !is(tokens.get(j), &TokenKind::Symbol, "(") || !BUILTINS.contains_key(name.as_str()) {
            continue;
        }
        if IMPURE.contains(&name.as_str()) {
            reads
                .uncacheable
                .get_or_insert_with(|| format!("{file}: calls {name}"));
        }
        let bounded = match name.as_str() {
            "sprintf" => format_literal(tokens.get(j + 1)).is_some_and(small_widths),
            n => BOUNDED.contains(&n),
        };
        if !bounded {
            reads.unbounded.get_or_insert_with(|| match name.as_str() {
                "sprintf" => format!(
                    "{file}: sprintf with a computed format or a width over {MAX_SPRINTF_WIDTH}"
                ),
                _ => format!("{file}: calls {name}"),
            });
        }
    }
}

/// A literal format string as written: a raw string, or a string without
/// `\u` escapes (which could spell a `%`).
fn format_literal(t: Option<&Token>) -> Option<&str> {
    let t = t?;
    match t.0 {
        TokenKind::RawString => Some(t.1.text()),
        TokenKind::String => Some(t.1.text()).filter(|s| !s.contains("\\u")),
        _ => None,
    }
}

/// The static part of the ref after `input`: `.a`, `["b"]`, … up to the
/// first computed part.
fn input_path(rest: &[Token]) -> Vec<String> {
    let mut path = Vec::new();
    let mut j = 0;
    loop {
        if is(rest.get(j), &TokenKind::Symbol, ".")
            && let Some(field) = rest.get(j + 1).filter(|t| t.0 == TokenKind::Ident)
        {
            path.push(field.1.text().to_owned());
            j += 2;
        } else if is(rest.get(j), &TokenKind::Symbol, "[")
            && let Some(key) = literal(rest.get(j + 1))
            && is(rest.get(j + 2), &TokenKind::Symbol, "]")
        {
            path.push(key.to_owned());
            j += 3;
        } else {
            return path;
        }
    }
}

/// Every `%…` directive's width and precision are at most
/// [`MAX_SPRINTF_WIDTH`] (and none comes from an argument, `*`).
fn small_widths(format: &str) -> bool {
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            continue;
        }
        let mut number: u64 = 0;
        while let Some(&n) = chars.peek() {
            match n {
                '*' => return false,
                '0'..='9' => {
                    number = number * 10 + u64::from(n as u8 - b'0');
                    if number > MAX_SPRINTF_WIDTH {
                        return false;
                    }
                }
                '.' => number = 0,
                '-' | '+' | '#' | ' ' => {}
                _ => break,
            }
            chars.next();
        }
        chars.next();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(rule: &str) -> Reads {
        scan(&[SourceFile {
            name: "p.rego".into(),
            text: format!("package agentguard\nimport rego.v1\n{rule}\n"),
        }])
    }

    fn paths(rule: &str) -> String {
        reads(rule).describe()
    }

    #[test]
    fn input_paths_are_read_up_to_the_first_computed_part() {
        assert_eq!(paths("x if input.request.sql == \"a\""), "request.sql");
        assert_eq!(paths("x if input.identity[\"pid\"] > 1"), "identity.pid");
        assert_eq!(
            paths("x if input.target.labels[_] == \"a\""),
            "target.labels"
        );
        assert_eq!(paths("x if { some k; input.request[k] }"), "request");
        assert_eq!(paths("x if count(input) > 1"), "all of input");
        assert_eq!(paths("x if walk(input, [p, v])"), "all of input");
        assert_eq!(
            paths("import input.identity as who\nx := who.pid"),
            "identity"
        );
        // Comments, strings and fields named `input` read nothing.
        assert_eq!(
            paths("# input.identity.pid\nx := \"input.identity.pid\"\ny := data.input.z"),
            "nothing from input"
        );
        // A covered path adds nothing.
        assert_eq!(
            paths("x if input.request.kind\ny if input.request"),
            "request"
        );
    }

    #[test]
    fn with_targets_are_not_reads() {
        let r = scan(&[SourceFile {
            name: "p_test.rego".into(),
            text: "package p_test\ntest_x if data.x with input as {}\ntest_y if data.y with input.a.b as 1\n"
                .into(),
        }]);
        assert_eq!(r.describe(), "nothing from input");
    }

    #[test]
    fn impure_and_unbounded_calls_are_found() {
        let r = reads("x if time.now_ns() > 1");
        assert_eq!(r.uncacheable.as_deref(), Some("p.rego: calls time.now_ns"));
        let r = reads("x := sprintf(`\\b%s\\s*\\(`, [1])");
        assert_eq!(r.unbounded, None);
        let r = reads("x := sprintf(\"\\u00252000d\", [1])");
        assert!(r.unbounded.is_some(), "{r:?}");
        let r = reads("x := sprintf(\"%s %v %5d\", [1, 2, 3])\ny := lower(\"A\")");
        assert_eq!((r.uncacheable, r.unbounded), (None, None));
        let r = reads("x := sprintf(\"%0200000000d\", [1])");
        assert!(r.unbounded.is_some(), "{r:?}");
        let r = reads("f := \"%d\"\nx := sprintf(f, [1])");
        assert!(r.unbounded.is_some(), "{r:?}");
        let r = reads("x := replace(input.a, \"a\", \"bb\")");
        assert_eq!(r.unbounded.as_deref(), Some("p.rego: calls replace"));
        // User functions are Rego, bounded by the VM's limits.
        let r = reads("f(x) := x\ny := f(1)\nz := data.agentguard.f(2)");
        assert_eq!(r.unbounded, None);
    }

    #[test]
    fn shipped_policies_are_cacheable_and_bounded() {
        let files = super::super::read_dir(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"),
        )
        .expect("policies");
        let r = scan(&files);
        assert_eq!((&r.uncacheable, &r.unbounded), (&None, &None), "{r:?}");
        assert!(r.describe().contains("request.sql"), "{}", r.describe());
    }
}
