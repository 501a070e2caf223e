//! The engine: compiled once from config, then values in, masked values and
//! findings out.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use crate::MaskError;
use crate::config::MaskConfig;
use crate::context::Words;
use crate::detect::{Hit, ScanCtx, Scanner};
use crate::entity::{self, Entity, SECRET_FIELD_NAMES};
use crate::select::{self, Item, Selection};
use crate::strategy::{self, MAX_NAME_LEN, Shape, Strategy};
use crate::stream::StreamMasker;

/// What kind of place a value comes from; decides which `column:`,
/// `field:` and `header:` rules can apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldKind {
    /// Free text (a message body, an SSE chunk): only content detectors.
    #[default]
    Text,
    /// A SQL result column: `name` is the column, `path` `table.column`.
    Column,
    /// A JSON value: `name` is its key, `path` its JSON path (`$.a.b[0]`).
    Field,
    /// An HTTP header: `name` is the header name.
    Header,
}

/// Where a value sits. Its name also feeds context scoring (`ssn`,
/// `order_id`), and is what findings report.
#[derive(Clone, Copy, Debug, Default)]
pub struct FieldContext<'a> {
    pub kind: FieldKind,
    pub name: Option<&'a str>,
    pub path: Option<&'a str>,
}

impl<'a> FieldContext<'a> {
    pub fn text() -> Self {
        Self::default()
    }
    pub fn column(name: &'a str, path: Option<&'a str>) -> Self {
        FieldContext {
            kind: FieldKind::Column,
            name: Some(name),
            path,
        }
    }
    pub fn field(name: &'a str, path: Option<&'a str>) -> Self {
        FieldContext {
            kind: FieldKind::Field,
            name: Some(name),
            path,
        }
    }
    pub fn header(name: &'a str) -> Self {
        FieldContext {
            kind: FieldKind::Header,
            name: Some(name),
            path: None,
        }
    }

    /// The words context scoring reads: the name, else the path's last
    /// segment.
    pub(crate) fn words(&self) -> Words {
        match (self.name, self.path) {
            (Some(n), _) => Words::new(n.as_bytes()),
            (None, Some(p)) => {
                let last = p.rsplit(['.', '/']).next().unwrap_or(p);
                Words::new(last.as_bytes())
            }
            (None, None) => Words::empty(),
        }
    }

    fn location(&self) -> Option<String> {
        self.path.or(self.name).map(str::to_owned)
    }
}

/// One audit line: what was masked, how often, where, how. Never the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Entity name (`email`, a custom pattern's name) or, for a rule that
    /// masked the whole value by its place, the rule (`column:users.ssn`).
    pub entity: Arc<str>,
    pub count: u32,
    /// The field's path, else its name; `None` for free text.
    pub location: Option<String>,
    pub strategy: Strategy,
}

/// A masked value. `value` borrows the input when nothing changed (no
/// allocation at all for values with nothing to mask).
#[derive(Clone, Debug)]
pub struct Masked<'v> {
    pub value: Cow<'v, str>,
    /// The whole value was selected with the `null` strategy: a caller that
    /// can (a SQL column) should send NULL; `value` holds a redact token for
    /// callers that cannot.
    pub null: bool,
    pub findings: Vec<Finding>,
}

impl Masked<'_> {
    pub fn changed(&self) -> bool {
        matches!(self.value, Cow::Owned(_))
    }
    /// How many spans were replaced (the sum of the findings' counts).
    pub fn spans(&self) -> usize {
        self.findings.iter().map(|f| f.count as usize).sum()
    }
}

/// [`Masked`] for byte values that may not be UTF-8.
#[derive(Clone, Debug)]
pub struct MaskedBytes<'v> {
    pub value: Cow<'v, [u8]>,
    pub null: bool,
    pub findings: Vec<Finding>,
}

pub(crate) struct EntityInfo {
    pub name: Arc<str>,
    pub shape: Shape,
}

/// Compiled detectors and rules. `Send + Sync`: build one, share it.
pub struct Engine {
    pub(crate) entities: Vec<EntityInfo>,
    pub(crate) keywords: Vec<Vec<String>>,
    pub(crate) scanner: Scanner,
    key: Vec<u8>,
    default: Selection,
    targets: HashMap<String, Selection>,
}

fn shape_of(e: Entity) -> Shape {
    use Entity::*;
    match e {
        Email => Shape::Email,
        Phone => Shape::Last2,
        Card | Iban | Ssn | Itin | AbaRouting | Cpf | Cnpj | Nino | Nhs => Shape::Last4,
        AwsAccessKey | GcpApiKey | GithubToken | GitlabToken | SlackToken | OpenaiKey
        | AnthropicKey => Shape::Prefix,
        PrivateKey => Shape::Pem,
        _ => Shape::All,
    }
}

impl Engine {
    pub fn new(config: &MaskConfig) -> Result<Engine, MaskError> {
        let mut entities: Vec<EntityInfo> = Entity::ALL
            .iter()
            .map(|&e| EntityInfo {
                name: Arc::from(e.name()),
                shape: shape_of(e),
            })
            .collect();
        let mut keywords: Vec<Vec<String>> = Entity::ALL
            .iter()
            .map(|e| e.keywords().iter().map(|k| (*k).to_owned()).collect())
            .collect();
        for p in &config.patterns {
            let ok_name = !p.name.is_empty()
                && p.name.len() <= MAX_NAME_LEN
                && p.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            let taken =
                entity::group(&p.name).is_some() || entities.iter().any(|e| *e.name == *p.name);
            if !ok_name || taken {
                return Err(MaskError::Name(p.name.clone()));
            }
            entities.push(EntityInfo {
                name: Arc::from(p.name.as_str()),
                shape: Shape::All,
            });
            keywords.push(p.keywords.iter().map(|k| k.to_ascii_lowercase()).collect());
        }
        let scanner = Scanner::new(&config.patterns)?;
        let key = match &config.hash_key {
            Some(k) if k.len() >= 16 => k.as_bytes().to_vec(),
            Some(_) => return Err(MaskError::HashKey),
            None => random_key(),
        };

        let mut enabled: Vec<bool> = Entity::ALL.iter().map(|e| e.default_on()).collect();
        let mut strategies: Vec<Strategy> =
            Entity::ALL.iter().map(|e| e.default_strategy()).collect();
        for p in &config.patterns {
            enabled.push(p.enabled);
            strategies.push(p.strategy.unwrap_or(Strategy::Redact));
        }
        let mut engine = Engine {
            entities,
            keywords,
            scanner,
            key,
            default: Selection {
                enabled,
                strategy: strategies,
                threshold: 0.5,
                rules: Vec::new(),
            },
            targets: HashMap::new(),
        };
        let mut default = engine.default.clone();
        engine.layer(
            &mut default,
            config.threshold,
            &config.strategies,
            &config.select,
        )?;
        for (name, t) in &config.targets {
            let mut sel = default.clone();
            engine.layer(&mut sel, t.threshold, &t.strategies, &t.select)?;
            engine.targets.insert(name.clone(), sel);
        }
        engine.default = default;
        Ok(engine)
    }

    fn layer(
        &self,
        sel: &mut Selection,
        threshold: Option<f32>,
        strategies: &std::collections::BTreeMap<String, Strategy>,
        items: &[String],
    ) -> Result<(), MaskError> {
        if let Some(t) = threshold {
            if !(0.0..=1.0).contains(&t) {
                return Err(MaskError::Threshold(t));
            }
            sel.threshold = t;
        }
        for (name, &s) in strategies {
            for i in self.resolve(name)? {
                sel.strategy[i] = s;
            }
        }
        self.apply(sel, items)
    }

    /// Entity indices for an entity, custom pattern or group name.
    fn resolve(&self, name: &str) -> Result<Vec<usize>, MaskError> {
        if let Some(i) = self.entities.iter().position(|e| *e.name == *name) {
            return Ok(vec![i]);
        }
        if let Some(g) = entity::group(name) {
            let mut v: Vec<usize> = g.iter().map(|e| e.index()).collect();
            if name == "all" {
                v.extend(Entity::ALL.len()..self.entities.len());
            }
            return Ok(v);
        }
        Err(MaskError::Select {
            item: name.to_owned(),
            reason: "unknown entity or group".into(),
        })
    }

    fn apply<S: AsRef<str>>(&self, sel: &mut Selection, items: &[S]) -> Result<(), MaskError> {
        for item in items {
            match select::parse_item(item.as_ref())? {
                Item::Entities { name, on, strategy } => {
                    for i in self.resolve(&name)? {
                        sel.enabled[i] = on;
                        if let Some(s) = strategy {
                            sel.strategy[i] = s;
                        }
                    }
                }
                Item::Rule { rule, on: true } => sel.rules.push(rule),
                Item::Rule { rule, on: false } => {
                    sel.rules
                        .retain(|r| !(r.kind == rule.kind && r.glob == rule.glob));
                }
            }
        }
        Ok(())
    }

    /// The selection with no target and no decision: config defaults.
    pub fn default_selection(&self) -> &Selection {
        &self.default
    }

    /// The rules for one decision: the target's config (or the defaults)
    /// plus the decision's `mask` list. An item that does not parse or names
    /// an unknown entity is an error: the caller should treat it like a
    /// policy error (deny), not mask less than the policy asked.
    pub fn selection<S: AsRef<str>>(
        &self,
        target: Option<&str>,
        mask: &[S],
    ) -> Result<Selection, MaskError> {
        let mut sel = target
            .and_then(|t| self.targets.get(t))
            .unwrap_or(&self.default)
            .clone();
        self.apply(&mut sel, mask)?;
        Ok(sel)
    }

    /// Names of every entity this engine knows, built-in then custom.
    pub fn entity_names(&self) -> impl Iterator<Item = &str> {
        self.entities.iter().map(|e| &*e.name)
    }

    /// Masks one value (a column, a JSON string, a header, a text body).
    pub fn mask_value<'v>(
        &self,
        value: &'v str,
        ctx: &FieldContext,
        sel: &Selection,
    ) -> Masked<'v> {
        let m = self.mask_bytes(value.as_bytes(), ctx, sel);
        let value = match m.value {
            Cow::Borrowed(_) => Cow::Borrowed(value),
            // Spans are widened to char boundaries, so this is UTF-8; the
            // lossy path only guards against a bug, never panics.
            Cow::Owned(bytes) => Cow::Owned(
                String::from_utf8(bytes)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            ),
        };
        Masked {
            value,
            null: m.null,
            findings: m.findings,
        }
    }

    /// [`Engine::mask_value`] for bytes that may not be UTF-8.
    pub fn mask_bytes<'v>(
        &self,
        value: &'v [u8],
        ctx: &FieldContext,
        sel: &Selection,
    ) -> MaskedBytes<'v> {
        if let Some((label, strategy)) = self.whole_rule(ctx, sel) {
            return self.mask_whole(value, ctx, label, strategy);
        }
        if !sel.any_detector() || !self.scanner.may_match(value) {
            return unchanged(value);
        }
        let field = ctx.words();
        let mut hits = Vec::new();
        self.scanner
            .scan(value, 0, 0, true, &self.scan_ctx(sel, &field), &mut hits);
        if hits.is_empty() {
            return unchanged(value);
        }
        let mut out = Vec::with_capacity(value.len() + 32);
        let mut findings = Vec::new();
        let end = self.render(
            value,
            0,
            value.len(),
            &hits,
            sel,
            ctx,
            &mut out,
            &mut findings,
        );
        out.extend_from_slice(&value[end..]);
        let null = hits.len() == 1
            && hits[0].span == (0..value.len())
            && sel.strategy[hits[0].entity] == Strategy::Null;
        MaskedBytes {
            value: Cow::Owned(out),
            null,
            findings,
        }
    }

    /// Masks a value that arrives in chunks (an SSE stream, a large body).
    /// See [`StreamMasker`].
    pub fn stream<'e>(&'e self, ctx: &FieldContext, sel: &'e Selection) -> StreamMasker<'e> {
        StreamMasker::new(self, ctx, sel)
    }

    pub(crate) fn scan_ctx<'a>(&'a self, sel: &'a Selection, field: &'a Words) -> ScanCtx<'a> {
        ScanCtx {
            enabled: &sel.enabled,
            threshold: sel.threshold,
            keywords: &self.keywords,
            field,
        }
    }

    /// A rule that masks this whole value by its place, if one applies:
    /// explicit rules first, then the secret-looking field names.
    pub(crate) fn whole_rule(
        &self,
        ctx: &FieldContext,
        sel: &Selection,
    ) -> Option<(Arc<str>, Strategy)> {
        if ctx.kind == FieldKind::Text {
            return None;
        }
        if let Some(r) = sel.rules.iter().find(|r| r.matches(ctx)) {
            return Some((r.label.clone(), r.strategy));
        }
        let secret = Entity::SecretField.index();
        if sel.enabled[secret] {
            let words = Words::new(ctx.name?.as_bytes());
            let w = words.as_bytes();
            let hit = SECRET_FIELD_NAMES
                .iter()
                .any(|n| w.len() == n.len() + 2 && &w[1..w.len() - 1] == n.as_bytes());
            if hit {
                return Some((self.entities[secret].name.clone(), sel.strategy[secret]));
            }
        }
        None
    }

    pub(crate) fn mask_whole<'v>(
        &self,
        value: &'v [u8],
        ctx: &FieldContext,
        label: Arc<str>,
        strategy: Strategy,
    ) -> MaskedBytes<'v> {
        // Empty or already masked: nothing to hide, and masking twice must
        // change nothing.
        if value.is_empty() || strategy::looks_masked(value) {
            return MaskedBytes {
                value: Cow::Borrowed(value),
                null: strategy == Strategy::Null && !value.is_empty(),
                findings: Vec::new(),
            };
        }
        let mut out = Vec::with_capacity(value.len().max(24));
        strategy::apply(strategy, Shape::All, &label, value, &self.key, &mut out);
        let changed = out != value;
        MaskedBytes {
            value: if changed {
                Cow::Owned(out)
            } else {
                Cow::Borrowed(value)
            },
            null: strategy == Strategy::Null,
            findings: vec![Finding {
                entity: label,
                count: 1,
                location: ctx.location(),
                strategy,
            }],
        }
    }

    /// Writes `value[from..to]` with `hits` replaced into `out`; returns
    /// where it stopped (`to`, or the end of the last hit if later).
    #[expect(
        clippy::too_many_arguments,
        reason = "one private helper shared by the one-shot and streaming paths"
    )]
    pub(crate) fn render(
        &self,
        value: &[u8],
        from: usize,
        to: usize,
        hits: &[Hit],
        sel: &Selection,
        ctx: &FieldContext,
        out: &mut Vec<u8>,
        findings: &mut Vec<Finding>,
    ) -> usize {
        let mut at = from;
        for hit in hits {
            let span = char_span(value, hit.span.clone());
            if span.start < at {
                continue;
            }
            out.extend_from_slice(&value[at..span.start]);
            let info = &self.entities[hit.entity];
            let strategy = sel.strategy[hit.entity];
            strategy::apply(
                strategy,
                info.shape,
                &info.name,
                &value[span.clone()],
                &self.key,
                out,
            );
            record(findings, &info.name, strategy, ctx);
            at = span.end;
        }
        if at < to {
            out.extend_from_slice(&value[at..to]);
            at = to;
        }
        at
    }
}

fn record(findings: &mut Vec<Finding>, entity: &Arc<str>, strategy: Strategy, ctx: &FieldContext) {
    match findings.iter_mut().find(|f| f.entity == *entity) {
        Some(f) => f.count += 1,
        None => findings.push(Finding {
            entity: entity.clone(),
            count: 1,
            location: ctx.location(),
            strategy,
        }),
    }
}

/// Widens a span to whole UTF-8 characters so a replacement never splits
/// one (only custom patterns and capped runs can end inside a character).
fn char_span(v: &[u8], mut s: std::ops::Range<usize>) -> std::ops::Range<usize> {
    let cont = |i: usize| v.get(i).is_some_and(|&b| (0x80..0xc0).contains(&b));
    while s.start > 0 && cont(s.start) {
        s.start -= 1;
    }
    while cont(s.end) {
        s.end += 1;
    }
    s
}

fn unchanged(value: &[u8]) -> MaskedBytes<'_> {
    MaskedBytes {
        value: Cow::Borrowed(value),
        null: false,
        findings: Vec::new(),
    }
}

/// 32 random bytes for an engine without a configured hash key.
fn random_key() -> Vec<u8> {
    use std::hash::{BuildHasher, Hasher};
    use std::io::Read;
    let mut key = vec![0u8; 32];
    let from_os = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut key));
    if from_os.is_err() {
        // std's hasher keys are seeded from the OS as well.
        for chunk in key.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    key
}
