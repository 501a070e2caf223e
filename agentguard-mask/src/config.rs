//! Configuration, loadable from TOML by the daemon (`[mask]` section).
//!
//! ```toml
//! threshold = 0.5                 # confidence needed to mask (0..1)
//! hash_key  = "…at least 16 bytes…" # for `hash`; random per start if absent
//! select    = ["ipv4", "-phone", "column:users.ssn=null"]   # see crate docs
//!
//! [strategies]                    # per entity (or group), overrides defaults
//! email = "hash"
//! card  = "partial:4"
//!
//! [[patterns]]                    # custom entities
//! name      = "employee_id"
//! regex     = "\\bEMP-[0-9]{6}\\b"
//! strategy  = "hash"
//! keywords  = ["employee"]
//!
//! [targets.app-db]                # per target, on top of the above
//! select    = ["ip"]
//! threshold = 0.6
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::strategy::Strategy;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaskConfig {
    /// Confidence a detection needs to be masked; 0.5 if absent.
    pub threshold: Option<f32>,
    /// Key for the `hash` strategy. Without one, a random key is made per
    /// engine, so tokens are stable only until the daemon restarts.
    pub hash_key: Option<String>,
    /// Selection items (the grammar of the policy's `mask` list) applied on
    /// top of the defaults.
    pub select: Vec<String>,
    /// Strategy per entity or group name.
    pub strategies: BTreeMap<String, Strategy>,
    pub patterns: Vec<CustomPattern>,
    /// Per target name (the `[[targets]]` name of the daemon config).
    pub targets: BTreeMap<String, TargetConfig>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TargetConfig {
    pub threshold: Option<f32>,
    pub select: Vec<String>,
    pub strategies: BTreeMap<String, Strategy>,
}

/// A custom entity: a regex, an optional validator, a strategy.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomPattern {
    /// Entity name (letters, digits, `_`; at most 32 bytes).
    pub name: String,
    /// Must have a bounded length (`{m,n}`, not `+`/`*`), at most 504
    /// bytes, so streaming stays exact. Compiled without Unicode: `\b`,
    /// `\d`, `\w` are ASCII.
    pub regex: String,
    #[serde(default)]
    pub validator: Validator,
    #[serde(default)]
    pub strategy: Option<Strategy>,
    /// Confidence of a match (default 0.9); below 0.9 keywords count.
    #[serde(default = "default_confidence")]
    pub confidence: f32,
    /// Field-name or nearby words that raise confidence.
    #[serde(default)]
    pub keywords: Vec<String>,
    /// On unless selected away (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn default_confidence() -> f32 {
    0.9
}

fn yes() -> bool {
    true
}

/// A checksum to run on a custom pattern's match.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Validator {
    #[default]
    None,
    /// Luhn over the match's digits (loyalty cards, IMEIs).
    Luhn,
    /// ISO 7064 MOD-97 over the match's letters and digits.
    Iban,
}
