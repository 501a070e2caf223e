//! The decision seam. Every protocol session builds an [`Input`] and asks a
//! [`Decide`] implementation; the answer is allow, deny or approve (hold for a
//! person). The Rego engine (`policy.rs`) implements it; the input below is
//! what policies see as `input` (docs/policy.md has the schema).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::{
    config::{Config, Protocol},
    identity::Identity,
};

#[derive(Debug, Clone, Serialize)]
pub struct Input {
    pub identity: Identity,
    pub target: Target,
    pub request: Request,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub ip: String,
    pub port: u16,
    pub name: Option<String>,
    pub protocol: Protocol,
    pub host: Option<String>,
    pub labels: Vec<String>,
}

impl Target {
    pub fn for_destination(config: &Config, dst: SocketAddr) -> Self {
        let found = config.target_for(dst);
        Self {
            ip: crate::net::canonical_ip(dst.ip()).to_string(),
            port: dst.port(),
            name: found.map(|(t, _)| t.name.clone()),
            protocol: found.map_or(Protocol::Tcp, |(t, _)| t.protocol),
            host: found.map(|(_, r)| r.host.clone()),
            labels: found.map(|(t, _)| t.labels.clone()).unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Request {
    /// L4: a connection, before any byte.
    Connect,
    /// One PostgreSQL Query or Parse message (possibly many statements).
    Sql(crate::pg::SqlRequest),
    /// A TLS connection passed through undecrypted: what its ClientHello
    /// names. Kind `connect`, like the L4 decision, with `sni` added.
    #[serde(rename = "connect")]
    TlsConnect(crate::http::TlsConnect),
    /// One HTTP request (any target with protocol http, and the rest).
    Http(crate::http::HttpRequest),
    /// One Kubernetes API request (targets with protocol k8s).
    K8s(crate::http::K8sRequest),
    /// One LLM API call (targets with protocol llm, or an OpenAI- or
    /// Anthropic-style path).
    Llm(crate::http::LlmRequest),
    /// One message the agent sends over an allowed WebSocket upgrade.
    WebSocket(crate::http::WebSocketMessage),
    /// One Redis command (targets with protocol redis).
    Redis(crate::redis::RedisRequest),
    /// One MySQL / MariaDB command (targets with protocol mysql).
    Mysql(crate::mysql::MysqlRequest),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
    #[allow(dead_code, reason = "produced by the policy engine")]
    Approve,
}

#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub action: Action,
    pub reason: String,
    /// What to mask in responses (detector names such as `email`).
    pub mask: Vec<String>,
    /// The policy bundle that decided; empty when none was loaded.
    pub policy_version: String,
    /// Who answered an `approve` decision (`agentguard approve`), or the
    /// standing grant that let it through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
}

impl Decision {
    pub fn deny(reason: impl Into<String>) -> Self {
        Self {
            action: Action::Deny,
            reason: reason.into(),
            mask: Vec::new(),
            policy_version: String::new(),
            approver: None,
        }
    }
}

pub trait Decide: Send + Sync {
    fn decide(&self, input: &Input) -> Decision;

    /// The same decision, reusing what `prepared` keeps of this
    /// connection's identity and target (they are the same for every
    /// request of a connection, so they are encoded once).
    fn decide_prepared(&self, input: &Input, prepared: &Prepared) -> Decision {
        let _ = prepared;
        self.decide(input)
    }
}

/// One connection's identity and target, as the policy engine encodes them
/// for `input`: filled by the first decision. Only for inputs with that
/// same identity and target.
#[derive(Default)]
pub struct Prepared {
    pub(crate) encoded: std::sync::OnceLock<Result<[regorus::Value; 2], String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_policy_only_allows_targets() {
        let config = Config::parse(
            std::path::Path::new("t"),
            "[[targets]]\nname = \"db\"\naddress = \"127.0.0.1:5432\"\n",
        )
        .expect("config");
        let identity = Identity {
            uid: 1,
            gid: 1,
            user: None,
            pid: 1,
            comm: String::new(),
            exe: None,
            cmdline: vec![],
            cgroup: None,
            cgroup_id: 0,
            agent: None,
            unit: None,
        };
        let input = |dst: &str| Input {
            identity: identity.clone(),
            target: Target::for_destination(&config, dst.parse().expect("addr")),
            request: Request::Connect,
        };
        let policy = crate::policy::PolicyEngine::builtin();
        assert_eq!(
            policy.decide(&input("127.0.0.1:5432")).action,
            Action::Allow
        );
        let mapped = policy.decide(&input("[::ffff:127.0.0.1]:5432"));
        assert_eq!(mapped.action, Action::Allow);
        let denied = policy.decide(&input("127.0.0.1:22"));
        assert_eq!(denied.action, Action::Deny);
        assert!(
            denied
                .reason
                .contains("127.0.0.1:22 is not a configured target"),
            "{}",
            denied.reason
        );
        assert!(!denied.policy_version.is_empty());
    }
}
