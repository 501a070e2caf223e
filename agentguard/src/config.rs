//! The TOML configuration (`/etc/agentguard/agentguard.toml`), in the shape of
//! shared/DESIGN.md. Unknown keys are errors: a typo in a guard's config must
//! not silently turn a rule off.

use std::{
    net::{IpAddr, SocketAddr, ToSocketAddrs},
    ops::Range,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

pub const DEFAULT_PATH: &str = "/etc/agentguard/agentguard.toml";
pub const DEFAULT_PORT: u16 = 15001;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config {path}, line {line}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default = "default_policy_dir")]
    pub policy_dir: PathBuf,
    /// Lock file, daemon info and (later) the control socket.
    #[serde(default = "default_run_dir")]
    pub run_dir: PathBuf,
    /// Where programs, maps and links are pinned (on a bpffs mount).
    #[serde(default = "default_bpffs_dir")]
    pub bpffs_dir: PathBuf,
    /// Seconds a request whose decision is `approve` is held before it is
    /// refused.
    #[serde(default = "default_approval_timeout")]
    pub approval_timeout_secs: u64,
    /// Run for every new hold, with the approval as JSON on stdin (a Slack
    /// or webhook script): program and arguments. Its failure is logged and
    /// never blocks the hold.
    #[serde(default)]
    pub approval_command: Vec<String>,
    #[serde(default)]
    pub control: Control,
    #[serde(default)]
    pub listener: Listener,
    #[serde(default)]
    pub dns: Dns,
    #[serde(default)]
    pub audit: Audit,
    #[serde(default)]
    pub unix_sockets: UnixSockets,
    #[serde(default)]
    pub sockets: Sockets,
    /// The mask engine's configuration (agentguard-mask `MaskConfig`):
    /// threshold, hash key, default selection, custom patterns, per-target
    /// overrides.
    #[serde(default)]
    pub mask: agentguard_mask::MaskConfig,
    /// Filled in by `load`: the compiled mask engine.
    #[serde(skip)]
    pub masker: Masker,
    #[serde(default)]
    pub agents: Vec<Agent>,
    #[serde(default)]
    pub targets: Vec<TargetConfig>,
    /// Secrets the guard injects on targets (credentials.rs); read by
    /// [`Config::open_credentials`], not by `load` (CLI commands that only
    /// talk to the daemon need not read them).
    #[serde(default)]
    pub credentials: Vec<crate::credentials::CredentialConfig>,
    /// Filled in by `open_credentials`.
    #[serde(skip)]
    pub secrets: crate::credentials::Store,
    /// Filled in by `load`: resolved target addresses.
    #[serde(skip)]
    pub resolved: Vec<ResolvedTarget>,
    /// Filled in by `load`: DNS resolvers that UDP port 53 may reach.
    #[serde(skip)]
    pub resolvers: Vec<IpAddr>,
    /// Filled in by `load`: the socket kinds `[sockets] allow` names.
    #[serde(skip)]
    pub socket_allow: Vec<agentguard_common::SocketKind>,
    /// Filled in by `load`: `[control] metrics_listen`, parsed.
    #[serde(skip)]
    pub metrics_addr: Option<SocketAddr>,
}

/// The compiled mask engine, shared by every connection.
#[derive(Clone, Default)]
pub struct Masker(pub Option<std::sync::Arc<agentguard_mask::Engine>>);

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Masker(compiled)"
        } else {
            "Masker(none)"
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// On 127.0.0.1 and ::1. 0 picks a free port (what `exec` does when it
    /// runs its own guard).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Seconds to wait for an upstream connect.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// Resolvers agents may query on UDP port 53. Unset: those in /etc/resolv.conf.
    pub resolvers: Option<Vec<Spanned<String>>>,
}

/// Agents' unix-socket connects and datagrams (kernel 6.7+,
/// `crate::unixguard`): refused except to the sockets listed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnixSockets {
    /// false: agents reach any unix socket their uid may open.
    #[serde(default = "yes")]
    pub guard: bool,
    /// Exact addresses as the agent spells them (a symlink or relative
    /// spelling of one is refused); `@name` for an abstract socket.
    #[serde(default = "default_unix_allow")]
    pub allow: Vec<Spanned<String>>,
}

/// AF_INET/AF_INET6 socket kinds beyond TCP and UDP
/// (`crate::socket_kinds`): refused at `socket()` unless listed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sockets {
    /// Names from `socket_kinds::NAMES` ("icmp", "icmpv6", "raw", "sctp",
    /// "udplite", "dccp"). Each is a way off the host the proxy never sees.
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
}

impl Default for UnixSockets {
    fn default() -> Self {
        Self {
            guard: true,
            allow: default_unix_allow(),
        }
    }
}

impl UnixSockets {
    /// What the loader needs: `None` when the guard is off.
    pub fn allow_list(&self) -> Option<Vec<String>> {
        self.guard
            .then(|| self.allow.iter().map(|a| a.get_ref().clone()).collect())
    }
}

fn default_unix_allow() -> Vec<Spanned<String>> {
    crate::unixguard::DEFAULT_ALLOW
        .iter()
        .map(|p| Spanned::new(0..0, (*p).to_owned()))
        .collect()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    pub name: String,
    /// Relative to the cgroup2 mount.
    pub cgroup: Option<String>,
    pub unit: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub name: String,
    /// `ip:port` or `host:port`, resolved at load.
    pub address: Spanned<String>,
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    #[serde(default)]
    pub labels: Vec<String>,
    /// HTTP-like targets (http, llm, k8s): intercept or passthrough.
    /// PostgreSQL targets: TLS to the server, `require` (encrypted, not
    /// verified, like libpq's sslmode=require) or `verify-full`; unset, the
    /// server is reached in plaintext. Either way an agent that asks for TLS
    /// gets it, terminated with a leaf from the agentguard CA.
    #[serde(default)]
    pub tls: TlsMode,
    /// Extra roots (PEM) trusted for this target's upstream certificate,
    /// on top of the system store.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Decrypt with a leaf minted by the agentguard CA, decide per request,
    /// re-encrypt towards the server (verified).
    #[default]
    Intercept,
    /// No decryption: one decision on the ClientHello's SNI, then bytes.
    Passthrough,
    /// PostgreSQL: TLS to the server without verifying its certificate.
    Require,
    /// PostgreSQL: TLS to the server, certificate and name verified
    /// against the system roots and `ca_file`.
    VerifyFull,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Postgres,
    Mysql,
    Http,
    Llm,
    K8s,
    Redis,
    Ssh,
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
            Self::Http => "http",
            Self::Llm => "llm",
            Self::K8s => "k8s",
            Self::Redis => "redis",
            Self::Ssh => "ssh",
            Self::Tcp => "tcp",
        }
    }
}

/// `[control]`: the daemon's local API (used by the CLI) and metrics.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// The control socket. Default: `<run_dir>/agentguard.sock`.
    pub socket: Option<PathBuf>,
    /// Also serve `GET /metrics` here (loopback only), e.g. "127.0.0.1:9464".
    pub metrics_listen: Option<Spanned<String>>,
}

/// `[audit]`: the decision log and session recordings in
/// `<state_dir>/agentguard.redb`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    /// false: nothing is recorded (no file is opened). For measuring what
    /// recording costs; a guard without an audit log is a blind one.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A reply goes out only once its decision record is in the journal
    /// (audit/journal.rs), so a killed daemon never loses the record of a
    /// request the agent saw answered (a power loss may lose the last
    /// ~50 ms). false: replies do not wait at all.
    #[serde(default = "yes")]
    pub commit_before_reply: bool,
    /// Records older than this are deleted in the background.
    #[serde(default = "default_retention_days")]
    pub retention_days: u64,
    /// Past 90% of this in use, the oldest records are deleted (in short
    /// steps, down to 80%); a file past it at start is compacted then.
    #[serde(default = "default_max_db_bytes")]
    pub max_db_bytes: u64,
    /// When the writer falls behind and the queue is full: slow the data
    /// path down (`block`) or refuse new requests (`deny`).
    #[serde(default)]
    pub on_overload: OnOverload,
    /// Records waiting for the writer, at most.
    #[serde(default = "default_audit_queue")]
    pub queue: usize,
    /// Result rows recorded per statement (the rest are counted).
    #[serde(default = "default_record_rows")]
    pub record_rows: usize,
    /// Result bytes recorded per statement.
    #[serde(default = "default_record_bytes")]
    pub record_bytes: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnOverload {
    #[default]
    Block,
    Deny,
}

impl Default for Audit {
    fn default() -> Self {
        Self {
            enabled: true,
            commit_before_reply: true,
            retention_days: default_retention_days(),
            max_db_bytes: default_max_db_bytes(),
            on_overload: OnOverload::Block,
            queue: default_audit_queue(),
            record_rows: default_record_rows(),
            record_bytes: default_record_bytes(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_retention_days() -> u64 {
    30
}
fn default_max_db_bytes() -> u64 {
    1 << 30
}
fn default_audit_queue() -> usize {
    10_000
}
fn default_record_rows() -> usize {
    1000
}
fn default_record_bytes() -> usize {
    1 << 20
}

#[derive(Debug, Clone)]
pub struct ResolvedTarget {
    pub index: usize,
    pub host: String,
    pub addrs: Vec<SocketAddr>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/agentguard")
}
fn default_policy_dir() -> PathBuf {
    PathBuf::from("/etc/agentguard/policies")
}
fn default_run_dir() -> PathBuf {
    PathBuf::from("/run/agentguard")
}
fn default_bpffs_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/agentguard")
}
fn default_approval_timeout() -> u64 {
    300
}
fn default_port() -> u16 {
    DEFAULT_PORT
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_protocol() -> Protocol {
    Protocol::Tcp
}

impl Default for Listener {
    fn default() -> Self {
        Self {
            port: DEFAULT_PORT,
            connect_timeout_secs: default_connect_timeout(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: default_state_dir(),
            policy_dir: default_policy_dir(),
            run_dir: default_run_dir(),
            bpffs_dir: default_bpffs_dir(),
            approval_timeout_secs: default_approval_timeout(),
            approval_command: Vec::new(),
            control: Control::default(),
            listener: Listener::default(),
            dns: Dns::default(),
            audit: Audit::default(),
            unix_sockets: UnixSockets::default(),
            sockets: Sockets::default(),
            mask: agentguard_mask::MaskConfig::default(),
            masker: Masker::default(),
            agents: Vec::new(),
            targets: Vec::new(),
            credentials: Vec::new(),
            secrets: crate::credentials::Store::default(),
            resolved: Vec::new(),
            resolvers: Vec::new(),
            socket_allow: Vec::new(),
            metrics_addr: None,
        }
    }
}

impl Config {
    /// `path` given: it must exist. Not given: the default file if present,
    /// else built-in defaults (so `agentguard exec` works out of the box).
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            Some(path) => Self::from_file(path),
            None if Path::new(DEFAULT_PATH).exists() => Self::from_file(Path::new(DEFAULT_PATH)),
            None => {
                let mut config = Config::default();
                config.resolve(Path::new("<built-in defaults>"), "")?;
                Ok(config)
            }
        }
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.resolve(path, text)?;
        Ok(config)
    }

    fn resolve(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let invalid = |span: Range<usize>, key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            line: line_of(text, span.start),
            key: key.to_owned(),
            message,
        };
        if self.audit.queue == 0 {
            return Err(ConfigError::Parse {
                path: path.to_owned(),
                message: "[audit] queue must be at least 1".into(),
            });
        }
        self.metrics_addr = match &self.control.metrics_listen {
            None => None,
            Some(s) => {
                let addr: SocketAddr = s.get_ref().parse().map_err(|e| {
                    invalid(
                        s.span(),
                        "control.metrics_listen",
                        format!("`{}`: {e} (want ip:port)", s.get_ref()),
                    )
                })?;
                if !addr.ip().is_loopback() {
                    return Err(invalid(
                        s.span(),
                        "control.metrics_listen",
                        format!(
                            "{addr} is not a loopback address; metrics are served on loopback only"
                        ),
                    ));
                }
                Some(addr)
            }
        };
        for agent in &self.agents {
            let set = usize::from(agent.cgroup.is_some()) + usize::from(agent.unit.is_some());
            if set != 1 {
                return Err(ConfigError::Parse {
                    path: path.to_owned(),
                    message: format!(
                        "agent `{}`: set exactly one of `cgroup` or `unit`",
                        agent.name
                    ),
                });
            }
        }
        let engine = agentguard_mask::Engine::new(&self.mask).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: format!("[mask]: {e}"),
        })?;
        self.masker = Masker(Some(std::sync::Arc::new(engine)));
        self.resolved.clear();
        for target in &self.targets {
            let database = matches!(target.protocol, Protocol::Postgres | Protocol::Mysql);
            let http_like = matches!(
                target.protocol,
                Protocol::Http | Protocol::Llm | Protocol::K8s
            );
            let ok = match target.tls {
                TlsMode::Intercept => true,
                TlsMode::Passthrough => http_like,
                TlsMode::Require | TlsMode::VerifyFull => database,
            };
            if !ok {
                return Err(ConfigError::Parse {
                    path: path.to_owned(),
                    message: format!(
                        "target `{}`: tls = {:?} does not apply to protocol {} (http, llm, k8s: intercept | passthrough; postgres, mysql: require | verify-full)",
                        target.name,
                        target.tls,
                        target.protocol.as_str()
                    ),
                });
            }
        }
        self.check_credentials(path)?;
        for (index, target) in self.targets.iter().enumerate() {
            let address = target.address.get_ref();
            let (host, _) = address.rsplit_once(':').ok_or_else(|| {
                invalid(
                    target.address.span(),
                    "targets.address",
                    format!("`{address}` has no port (want host:port)"),
                )
            })?;
            let addrs: Vec<SocketAddr> = address
                .to_socket_addrs()
                .map_err(|e| {
                    invalid(
                        target.address.span(),
                        "targets.address",
                        format!("cannot resolve `{address}`: {e}"),
                    )
                })?
                .collect();
            self.resolved.push(ResolvedTarget {
                index,
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                addrs,
            });
        }
        for entry in &self.unix_sockets.allow {
            if agentguard_common::UnixPath::parse(entry.get_ref()).is_none() {
                return Err(invalid(
                    entry.span(),
                    "unix_sockets.allow",
                    format!(
                        "`{}` is not a unix socket address (a path or @name, at most 108 bytes)",
                        entry.get_ref()
                    ),
                ));
            }
        }
        self.socket_allow.clear();
        for entry in &self.sockets.allow {
            let kinds = crate::socket_kinds::allowed_by(entry.get_ref()).ok_or_else(|| {
                let known: Vec<&str> = crate::socket_kinds::NAMES.iter().map(|(n, _)| *n).collect();
                invalid(
                    entry.span(),
                    "sockets.allow",
                    format!(
                        "`{}` is not a socket kind agentguard knows (one of: {})",
                        entry.get_ref(),
                        known.join(", ")
                    ),
                )
            })?;
            self.socket_allow.extend_from_slice(kinds);
        }
        self.resolvers = match &self.dns.resolvers {
            Some(list) => list
                .iter()
                .map(|r| {
                    r.get_ref().parse::<IpAddr>().map_err(|e| {
                        invalid(
                            r.span(),
                            "dns.resolvers",
                            format!("`{}` is not an IP address: {e}", r.get_ref()),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
            None => system_resolvers(),
        };
        Ok(())
    }

    /// `[[credentials]]` fit their targets (the secrets are read later).
    fn check_credentials(&self, path: &Path) -> Result<(), ConfigError> {
        use crate::credentials::HttpInject;
        let bad = |name: &str, message: String| ConfigError::Parse {
            path: path.to_owned(),
            message: format!("credential `{name}`: {message}"),
        };
        for (i, c) in self.credentials.iter().enumerate() {
            if self.credentials[..i].iter().any(|o| o.name == c.name) {
                return Err(bad(&c.name, "the name is used twice".into()));
            }
            let Some(target) = self.targets.iter().find(|t| t.name == c.target) else {
                return Err(bad(
                    &c.name,
                    format!("target `{}` is not in [[targets]]", c.target),
                ));
            };
            match target.protocol {
                Protocol::Postgres | Protocol::Mysql => {
                    if c.role.is_none() {
                        return Err(bad(
                            &c.name,
                            "a database credential needs `role` (the user the guard logs in as)"
                                .into(),
                        ));
                    }
                    let same = self.credentials[..i]
                        .iter()
                        .any(|o| o.target == c.target && o.db_user == c.db_user);
                    if same {
                        return Err(bad(
                            &c.name,
                            format!(
                                "another credential of target `{}` maps the same db_user",
                                c.target
                            ),
                        ));
                    }
                }
                Protocol::Http | Protocol::Llm | Protocol::K8s => {
                    if self.credentials[..i].iter().any(|o| o.target == c.target) {
                        return Err(bad(
                            &c.name,
                            format!("target `{}` has a credential already", c.target),
                        ));
                    }
                    if target.tls == TlsMode::Passthrough {
                        return Err(bad(
                            &c.name,
                            format!(
                                "target `{}` is tls = \"passthrough\": no header can be set on traffic the guard does not decrypt",
                                c.target
                            ),
                        ));
                    }
                    let missing = match c.inject {
                        HttpInject::Header => c.header.is_none().then_some("header"),
                        HttpInject::Query => c.query.is_none().then_some("query"),
                        HttpInject::Basic => c.username.is_none().then_some("username"),
                        HttpInject::Bearer => None,
                    };
                    if let Some(key) = missing {
                        return Err(bad(
                            &c.name,
                            format!("inject = {:?} needs `{key}`", c.inject),
                        ));
                    }
                    if let Some(h) = &c.header
                        && http::HeaderName::from_bytes(h.as_bytes()).is_err()
                    {
                        return Err(bad(&c.name, format!("`{h}` is not a header name")));
                    }
                }
                other => {
                    return Err(bad(
                        &c.name,
                        format!(
                            "target `{}` is protocol {}; credentials are injected on postgres, mysql, http, llm and k8s targets",
                            c.target,
                            other.as_str()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Reads every `[[credentials]]` secret (checked: readable by
    /// agentguard only). For the daemon and `exec`, before they serve.
    pub fn open_credentials(&mut self) -> Result<(), crate::credentials::CredentialError> {
        self.secrets = crate::credentials::Store::open(&self.credentials)?;
        Ok(())
    }

    /// The configured target a connection's original destination belongs to.
    pub fn target_for(&self, dst: SocketAddr) -> Option<(&TargetConfig, &ResolvedTarget)> {
        let dst = SocketAddr::new(crate::net::canonical_ip(dst.ip()), dst.port());
        self.resolved
            .iter()
            .find(|r| {
                r.addrs
                    .iter()
                    .any(|a| SocketAddr::new(crate::net::canonical_ip(a.ip()), a.port()) == dst)
            })
            .map(|r| (&self.targets[r.index], r))
    }

    /// The control socket's path.
    pub fn control_socket(&self) -> PathBuf {
        self.control
            .socket
            .clone()
            .unwrap_or_else(|| self.run_dir.join("agentguard.sock"))
    }

    pub fn agent(&self, name: &str) -> Option<&Agent> {
        self.agents.iter().find(|a| a.name == name)
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |t| t.matches('\n').count()) + 1
}

/// Nameservers from /etc/resolv.conf; none if it cannot be read.
pub fn system_resolvers() -> Vec<IpAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .map(|text| parse_resolv_conf(&text))
        .unwrap_or_default()
}

fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(|ip| ip.split('%').next()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("t.toml"), text)
    }

    #[test]
    fn full_shape_parses() {
        let config = parse(
            r#"
state_dir = "/tmp/s"
[listener]
port = 15099
[dns]
resolvers = ["127.0.0.53", "::1"]
[[agents]]
name = "coder"
cgroup = "/agentguard/coder"
[[targets]]
name = "app-db"
address = "127.0.0.1:5432"
protocol = "postgres"
labels = ["production"]
"#,
        )
        .expect("valid config");
        assert_eq!(config.listener.port, 15099);
        assert_eq!(config.resolvers.len(), 2);
        assert_eq!(config.targets[0].protocol, Protocol::Postgres);
        let dst: SocketAddr = "127.0.0.1:5432".parse().expect("addr");
        assert_eq!(
            config.target_for(dst).map(|(t, _)| t.name.as_str()),
            Some("app-db")
        );
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5432".parse().expect("addr");
        assert!(
            config.target_for(mapped).is_some(),
            "v4-mapped matches the v4 target"
        );
        assert!(
            config
                .target_for("127.0.0.1:5433".parse().expect("addr"))
                .is_none()
        );
    }

    #[test]
    fn tls_mode_and_ca_file() {
        let config = parse(
            "[[targets]]\nname = \"a\"\naddress = \"127.0.0.1:443\"\nprotocol = \"http\"\ntls = \"passthrough\"\nca_file = \"/x.pem\"\n",
        )
        .expect("valid");
        assert_eq!(config.targets[0].tls, TlsMode::Passthrough);
        assert_eq!(config.targets[0].ca_file, Some(PathBuf::from("/x.pem")));
        let config =
            parse("[[targets]]\nname = \"a\"\naddress = \"127.0.0.1:443\"\n").expect("valid");
        assert_eq!(config.targets[0].tls, TlsMode::Intercept);
        assert!(
            parse("[[targets]]\nname = \"a\"\naddress = \"127.0.0.1:443\"\ntls = \"off\"\n")
                .is_err()
        );
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = parse("state_dir = \"/x\"\n[listener]\nprot = 1\n").expect_err("typo must fail");
        let msg = err.to_string();
        assert!(msg.contains("line 3"), "{msg}");
        assert!(msg.contains("prot"), "{msg}");
    }

    #[test]
    fn bad_address_names_key_and_line() {
        let err =
            parse("[[targets]]\nname = \"a\"\n\naddress = \"nope\"\n").expect_err("must fail");
        let msg = err.to_string();
        assert!(
            msg.contains("line 4") && msg.contains("targets.address"),
            "{msg}"
        );
    }

    #[test]
    fn audit_defaults_and_overrides() {
        let config = parse("").expect("empty config");
        assert_eq!(config.audit.retention_days, 30);
        assert_eq!(config.audit.max_db_bytes, 1 << 30);
        assert_eq!(config.audit.on_overload, OnOverload::Block);
        assert_eq!(config.audit.queue, 10_000);
        assert!(config.audit.enabled && config.audit.commit_before_reply);
        let config = parse("[audit]\nretention_days = 7\non_overload = \"deny\"\nqueue = 16\n")
            .expect("audit config");
        assert_eq!(config.audit.retention_days, 7);
        assert_eq!(config.audit.on_overload, OnOverload::Deny);
        assert_eq!(config.audit.queue, 16);
        let err = parse("[audit]\nretention = 7\n").expect_err("typo must fail");
        assert!(err.to_string().contains("retention"), "{err}");
        assert!(parse("[audit]\non_overload = \"drop\"\n").is_err());
    }

    #[test]
    fn bad_resolver_is_refused() {
        let err = parse("[dns]\nresolvers = [\"1.2.3\"]\n").expect_err("must fail");
        assert!(err.to_string().contains("dns.resolvers"), "{err}");
    }

    #[test]
    fn unix_socket_allow_list() {
        let config = parse("").expect("defaults");
        let allow = config
            .unix_sockets
            .allow_list()
            .expect("guarded by default");
        assert!(allow.contains(&"/run/nscd/socket".to_owned()), "{allow:?}");
        let config = parse("[unix_sockets]\nguard = false\n").expect("off");
        assert!(config.unix_sockets.allow_list().is_none());
        let config = parse("[unix_sockets]\nallow = []\n").expect("none allowed");
        assert_eq!(config.unix_sockets.allow_list(), Some(Vec::new()));
        let long = "x".repeat(200);
        let err =
            parse(&format!("\n[unix_sockets]\nallow = [\"{long}\"]\n")).expect_err("too long");
        let msg = err.to_string();
        assert!(
            msg.contains("unix_sockets.allow") && msg.contains("line 3"),
            "{msg}"
        );
        assert!(
            parse("[unix_sockets]\nalow = []\n").is_err(),
            "typo must fail"
        );
    }

    #[test]
    fn agent_needs_cgroup_or_unit() {
        assert!(parse("[[agents]]\nname = \"a\"\n").is_err());
        assert!(
            parse("[[agents]]\nname = \"a\"\ncgroup = \"/x\"\nunit = \"y.service\"\n").is_err()
        );
    }

    #[test]
    fn resolv_conf() {
        let ips =
            parse_resolv_conf("# c\nnameserver 10.0.0.1\nnameserver fe80::1%eth0\noptions x\n");
        assert_eq!(
            ips,
            vec![
                "10.0.0.1".parse::<IpAddr>().expect("ip"),
                "fe80::1".parse().expect("ip")
            ]
        );
    }
}
