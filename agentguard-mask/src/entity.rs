//! The built-in entities: their names (the words policies and config use),
//! which are on by default and why, their default strategy, and the words
//! that make a detection more or less likely.

use crate::strategy::Strategy;

/// A built-in kind of sensitive value. Custom patterns from the config are
/// entities too, but only by name (see [`crate::MaskConfig::patterns`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    Email,
    Phone,
    Card,
    Iban,
    Ssn,
    Itin,
    AbaRouting,
    Cpf,
    Cnpj,
    Nino,
    Nhs,
    Ipv4,
    Ipv6,
    Mac,
    BtcAddress,
    EthAddress,
    Dob,
    AwsAccessKey,
    AwsSecretKey,
    GcpApiKey,
    AzureKey,
    GithubToken,
    GitlabToken,
    SlackToken,
    OpenaiKey,
    AnthropicKey,
    Jwt,
    PrivateKey,
    Password,
    BearerToken,
    /// A whole value whose field name says it is a secret (`password`,
    /// `api_key`, `authorization`, ...), whatever it looks like.
    SecretField,
}

impl Entity {
    pub const ALL: [Entity; 31] = [
        Entity::Email,
        Entity::Phone,
        Entity::Card,
        Entity::Iban,
        Entity::Ssn,
        Entity::Itin,
        Entity::AbaRouting,
        Entity::Cpf,
        Entity::Cnpj,
        Entity::Nino,
        Entity::Nhs,
        Entity::Ipv4,
        Entity::Ipv6,
        Entity::Mac,
        Entity::BtcAddress,
        Entity::EthAddress,
        Entity::Dob,
        Entity::AwsAccessKey,
        Entity::AwsSecretKey,
        Entity::GcpApiKey,
        Entity::AzureKey,
        Entity::GithubToken,
        Entity::GitlabToken,
        Entity::SlackToken,
        Entity::OpenaiKey,
        Entity::AnthropicKey,
        Entity::Jwt,
        Entity::PrivateKey,
        Entity::Password,
        Entity::BearerToken,
        Entity::SecretField,
    ];

    /// The name used in config, in the policy's `mask` list and in findings.
    pub fn name(self) -> &'static str {
        match self {
            Entity::Email => "email",
            Entity::Phone => "phone",
            Entity::Card => "card",
            Entity::Iban => "iban",
            Entity::Ssn => "ssn",
            Entity::Itin => "itin",
            Entity::AbaRouting => "aba_routing",
            Entity::Cpf => "cpf",
            Entity::Cnpj => "cnpj",
            Entity::Nino => "nino",
            Entity::Nhs => "nhs",
            Entity::Ipv4 => "ipv4",
            Entity::Ipv6 => "ipv6",
            Entity::Mac => "mac",
            Entity::BtcAddress => "btc_address",
            Entity::EthAddress => "eth_address",
            Entity::Dob => "dob",
            Entity::AwsAccessKey => "aws_access_key",
            Entity::AwsSecretKey => "aws_secret_key",
            Entity::GcpApiKey => "gcp_api_key",
            Entity::AzureKey => "azure_key",
            Entity::GithubToken => "github_token",
            Entity::GitlabToken => "gitlab_token",
            Entity::SlackToken => "slack_token",
            Entity::OpenaiKey => "openai_key",
            Entity::AnthropicKey => "anthropic_key",
            Entity::Jwt => "jwt",
            Entity::PrivateKey => "private_key",
            Entity::Password => "password",
            Entity::BearerToken => "bearer_token",
            Entity::SecretField => "secret_field",
        }
    }

    pub fn from_name(name: &str) -> Option<Entity> {
        Entity::ALL.into_iter().find(|e| e.name() == name)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Credentials: leaking one hands over access, so they are always on by
    /// default and redacted whole.
    pub fn is_secret(self) -> bool {
        matches!(
            self,
            Entity::AwsAccessKey
                | Entity::AwsSecretKey
                | Entity::GcpApiKey
                | Entity::AzureKey
                | Entity::GithubToken
                | Entity::GitlabToken
                | Entity::SlackToken
                | Entity::OpenaiKey
                | Entity::AnthropicKey
                | Entity::Jwt
                | Entity::PrivateKey
                | Entity::Password
                | Entity::BearerToken
                | Entity::SecretField
        )
    }

    /// On unless the config or the decision turns it off.
    ///
    /// Off by default: IP and MAC addresses and crypto wallet addresses.
    /// Agents doing operations work read hosts, logs and configs all day;
    /// masking every address breaks that workflow, and addresses are
    /// personal data only in some settings (a policy or a target's config
    /// turns them on where they are). Wallet addresses are public by design
    /// and hex-heavy developer text makes them noisy.
    ///
    /// On: everything that is a person's identity or money (email, phone,
    /// card, IBAN, national ids) and every credential. The weak numeric ones
    /// (ABA routing, NHS, bare 9/11-digit ids, dates of birth) are on but
    /// only fire with context — a field name or a nearby word — because
    /// their formats alone are indistinguishable from ordinary numbers.
    pub fn default_on(self) -> bool {
        !matches!(
            self,
            Entity::Ipv4 | Entity::Ipv6 | Entity::Mac | Entity::BtcAddress | Entity::EthAddress
        )
    }

    /// Secrets are redacted whole; personal data keeps its shape so an agent
    /// can still tell an email from a card (and the last digits from each
    /// other, as a support desk would).
    pub fn default_strategy(self) -> Strategy {
        match self {
            Entity::Email | Entity::Phone | Entity::Ipv4 | Entity::Ipv6 | Entity::Mac => {
                Strategy::Mask
            }
            Entity::Card
            | Entity::Iban
            | Entity::Ssn
            | Entity::Itin
            | Entity::AbaRouting
            | Entity::Cpf
            | Entity::Cnpj
            | Entity::Nino
            | Entity::Nhs => Strategy::Mask,
            _ => Strategy::Redact,
        }
    }

    /// Words that, as a field name or just before the value, make this
    /// entity more likely. Matched as whole words of the snake_cased name.
    pub(crate) fn keywords(self) -> &'static [&'static str] {
        match self {
            Entity::Email => &["email", "e_mail", "mail", "emails"],
            Entity::Phone => &[
                "phone",
                "tel",
                "telephone",
                "mobile",
                "cell",
                "fax",
                "msisdn",
                "call",
            ],
            Entity::Card => &["card", "cc", "pan", "credit", "debit", "visa", "amex"],
            Entity::Iban => &["iban", "bank", "account"],
            Entity::Ssn => &["ssn", "social_security", "tax_id", "taxpayer", "tin"],
            Entity::Itin => &["itin", "tax_id", "taxpayer", "tin"],
            Entity::AbaRouting => &["routing", "aba", "rtn", "transit"],
            Entity::Cpf => &["cpf"],
            Entity::Cnpj => &["cnpj"],
            Entity::Nino => &["nino", "national_insurance", "ni_number", "ni"],
            Entity::Nhs => &["nhs", "nhs_number", "nhs_no"],
            Entity::Ipv4 | Entity::Ipv6 => &["ip", "ip_address", "addr", "remote_addr", "host"],
            Entity::Mac => &["mac", "hwaddr", "ether"],
            Entity::BtcAddress => &["btc", "bitcoin", "wallet"],
            Entity::EthAddress => &["eth", "ethereum", "wallet"],
            Entity::Dob => &[
                "dob",
                "birth",
                "birthday",
                "born",
                "birthdate",
                "date_of_birth",
            ],
            Entity::AwsSecretKey => &["aws", "secret", "secret_access_key"],
            _ => &[],
        }
    }
}

/// Words that make a weak numeric detection less likely: an id, a version,
/// a count. Only applied where the format alone is weak evidence.
pub(crate) const NEGATIVE_WORDS: &[&str] = &[
    "id",
    "ids",
    "order",
    "invoice",
    "build",
    "version",
    "ver",
    "sku",
    "tracking",
    "ref",
    "reference",
    "uuid",
    "count",
    "seq",
    "timestamp",
    "ts",
    "epoch",
    "zip",
    "postal",
    "port",
    "pid",
    "line",
    "row",
    "page",
    "amount",
    "price",
    "total",
    "qty",
    "hash",
    "sha",
    "commit",
    "release",
];

/// Field names whose whole value is a secret, whatever it looks like
/// (compared after snake_casing: `apiKey`, `api-key` and `API_KEY` all match
/// `api_key`). Exact names only: `token_count` or `password_updated_at` must
/// not be masked.
pub(crate) const SECRET_FIELD_NAMES: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "pass",
    "passphrase",
    "password_hash",
    "secret",
    "client_secret",
    "secret_key",
    "api_key",
    "apikey",
    "x_api_key",
    "access_key",
    "access_token",
    "refresh_token",
    "auth_token",
    "id_token",
    "token",
    "private_key",
    "authorization",
    "proxy_authorization",
    "cookie",
    "set_cookie",
    "aws_secret_access_key",
    "secret_access_key",
    "aws_secret_key",
    "aws_session_token",
];

/// Names of entity groups accepted wherever an entity name is.
pub(crate) fn group(name: &str) -> Option<Vec<Entity>> {
    let all = Entity::ALL.into_iter();
    Some(match name {
        "all" => all.collect(),
        "secrets" => all.filter(|e| e.is_secret()).collect(),
        "pii" => all.filter(|e| !e.is_secret()).collect(),
        "ip" => vec![Entity::Ipv4, Entity::Ipv6],
        "network" => vec![Entity::Ipv4, Entity::Ipv6, Entity::Mac],
        "crypto" => vec![Entity::BtcAddress, Entity::EthAddress],
        "national_id" => vec![
            Entity::Ssn,
            Entity::Itin,
            Entity::Cpf,
            Entity::Cnpj,
            Entity::Nino,
            Entity::Nhs,
        ],
        "financial" => vec![Entity::Card, Entity::Iban, Entity::AbaRouting],
        _ => return None,
    })
}
