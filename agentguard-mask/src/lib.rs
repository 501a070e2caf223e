//! agentguard's mask engine: finds sensitive values — personal data and
//! credentials — in text, and replaces them before a byte reaches the
//! agent. It knows no protocol: the PostgreSQL, HTTP, ... guards hand it
//! values (a column, a JSON string, a header, a body chunk) with where they
//! came from, and get back masked values and audit findings.
//!
//! ```
//! use agentguard_mask::{Engine, FieldContext, MaskConfig};
//!
//! let engine = Engine::new(&MaskConfig::default())?;
//! // Once per policy decision: config defaults + the decision's `mask` list.
//! let sel = engine.selection(Some("app-db"), &["column:users.ssn=null", "ipv4"])?;
//!
//! let m = engine.mask_value("mail john.doe@example.com, card 4111 1111 1111 1111",
//!                           &FieldContext::text(), &sel);
//! assert_eq!(m.value, "mail j***.***@*******.com, card **** **** **** 1111");
//! assert_eq!(m.findings.len(), 2); // entity, count, where — never the value
//!
//! let m = engine.mask_value("078-05-1121", &FieldContext::column("ssn", Some("users.ssn")), &sel);
//! assert!(m.null); // the rule asked for NULL
//! # Ok::<(), agentguard_mask::MaskError>(())
//! ```
//!
//! # API
//! - [`Engine::new`] compiles every detector once (one multi-pattern regex
//!   plus a literal prefilter). An `Engine` is `Send + Sync`.
//! - [`Engine::selection`] turns a target name and the decision's `mask`
//!   list into a [`Selection`]: which detectors are on, each one's
//!   [`Strategy`], the threshold, and the field rules.
//! - [`Engine::mask_value`] / [`Engine::mask_bytes`] mask one value. The
//!   result borrows the input when nothing changed: a value with nothing to
//!   mask costs no allocation.
//! - [`Engine::stream`] masks a value that arrives in chunks
//!   ([`StreamMasker`]); its output equals the one-shot output for any
//!   chunking.
//!
//! # The `mask` list grammar (also config `select`)
//! ```text
//! item     = ["-"] selector ["=" strategy]
//! selector = entity | group
//!          | "column:" glob   -- SQL column: glob on `table.column` if it has a dot, else on the column name
//!          | "field:"  glob   -- JSON value: glob on the JSON path if it starts with `$`, else on the key
//!          | "header:" glob   -- HTTP header name
//!          | "name:"   glob   -- any named place (column, key or header)
//! strategy = "redact" | "mask" | "partial:" N | "hash" | "null"
//! group    = "all" | "pii" | "secrets" | "ip" | "network" | "crypto" | "national_id" | "financial"
//! glob     = case-insensitive; `*` any run (dots included), `?` one byte
//! ```
//! An entity or group turns its detectors on (with `=strategy`, also sets
//! their strategy); `-entity` turns them off. A place selector masks the
//! whole value there, whatever it contains (strategy `redact` unless
//! given); `-column:x` removes such a rule. Items apply in order: config
//! `select`, then the target's `select`, then the decision's list. An
//! unknown entity or a malformed item is an error, not ignored.
//!
//! # Detectors and defaults
//! See [`Entity`] for the list, [`Entity::default_on`] for which are on
//! by default and why, and [`Entity::default_strategy`]. Values in fields
//! named like secrets (`password`, `api_key`, `authorization`, `cookie`,
//! ...) are redacted whole (entity `secret_field`).
//!
//! Each detection has a confidence from its validator (a Luhn-valid card
//! with a known issuer prefix: 0.95; a bare 9-digit number that passes the
//! SSN rules: 0.3). Below 0.9, the field name (+0.5 if it names the entity,
//! −0.4 if it names an id, version, count...) and the words within 48 bytes
//! before it (+0.3 / −0.25) adjust it; it is masked at or above the
//! threshold (0.5 by default).
//!
//! # Bounds
//! - Masking never lengthens a value by more than [`MAX_TOKEN_LEN`] bytes
//!   per replaced span: `out.len() <= in.len() + MAX_TOKEN_LEN * spans`
//!   (`mask` and `partial` keep the length exactly).
//! - Masking is idempotent: masked output contains nothing a detector
//!   finds, and whole-value rules leave tokens they wrote alone. (A
//!   `partial:N` that keeps a whole entity's worth of digits is the
//!   caller's choice to break this.)
//! - Streaming guarantees entities up to [`MAX_ENTITY_LEN`] bytes (every
//!   regex-matched entity) and PEM blocks / JWTs up to [`MAX_LONG_ENTITY`].
//!
//! # Known gaps
//! - Two values glued together by word characters (`…1111ghp_…`,
//!   `…@uni.edu4111…`) are one token to the detectors, which need a token
//!   boundary at both ends; each may be missed. (A hit's end and a PEM
//!   armor line are boundaries: `…-----END … KEY-----j.doe@example.com`
//!   masks both.)
//! - The prefilter skips text with no digit, no `@` and no secret literal;
//!   an IPv6 or MAC address written without a single digit is missed, and
//!   so is a key word in mixed case (`PassWord=x`; lower, Capitalised and
//!   UPPER are covered).
//! - Phone numbers: E.164 (`+…`), North American and trunk-prefixed (`0…`)
//!   national formats; bare digit runs need context (a `phone` field).

mod config;
mod context;
mod detect;
mod engine;
mod entity;
mod select;
mod strategy;
mod stream;

pub use config::{CustomPattern, MaskConfig, TargetConfig, Validator};
pub use detect::{MAX_ENTITY_LEN, MAX_LONG_ENTITY};
pub use engine::{Engine, FieldContext, FieldKind, Finding, Masked, MaskedBytes};
pub use entity::Entity;
pub use select::Selection;
pub use strategy::{MAX_TOKEN_LEN, Strategy};
pub use stream::StreamMasker;

/// Errors building an engine or a selection. Each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    #[error("unknown masking strategy `{0}`: use redact, mask, partial:N, hash or null")]
    Strategy(String),
    #[error("mask selection `{item}`: {reason}")]
    Select { item: String, reason: String },
    #[error("custom pattern `{name}` does not compile: {error}")]
    Pattern { name: String, error: String },
    #[error(
        "custom pattern `{name}` can match text of unbounded length: bound its repeats ({{m,n}} instead of + or *) so a match is at most {max} bytes"
    )]
    Unbounded { name: String, max: usize },
    #[error(
        "custom pattern name `{0}`: use 1-32 lowercase letters, digits or `_`, not a built-in entity or group name"
    )]
    Name(String),
    #[error("mask hash_key must be at least 16 bytes")]
    HashKey,
    #[error("mask threshold {0} is outside 0..=1")]
    Threshold(f32),
}
