//! Credential injection for PostgreSQL: the guard logs in to the server as
//! the credential's role with its stored secret (SCRAM-SHA-256, md5 or
//! cleartext, whichever the server asks), and the agent, which never held
//! the password, is told AuthenticationOk. The agent's own password is
//! never asked for.

use bytes::{Buf as _, Bytes, BytesMut};
use postgres_protocol::{
    authentication::{md5_hash, sasl},
    message::frontend,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::codec::{self, tag};
use crate::credentials::Secret;

/// Authentication request codes (the 'R' message's first int32).
const AUTH_OK: i32 = 0;
const AUTH_CLEARTEXT: i32 = 3;
const AUTH_MD5: i32 = 5;
const AUTH_SASL: i32 = 10;
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;

/// Longest authentication message the server may send.
const MAX_AUTH_MESSAGE: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The server refused the stored secret (or the role): its own words.
    #[error("the server refused the login as `{role}`: {message} (SQLSTATE {code})")]
    Rejected {
        role: String,
        code: String,
        message: String,
    },
    #[error("the server asks for {0}, which agentguard cannot answer with a stored password")]
    Unsupported(String),
    #[error("authentication with the server failed: {0}")]
    Protocol(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A startup message for the server: the agent's parameters with `user`
/// replaced by the role (and `database` kept as the agent would have had
/// it: its own user name when it named none).
pub fn startup_for(params: &[(String, String)], role: &str) -> Result<Bytes, AuthError> {
    let agent_user = params
        .iter()
        .find(|(k, _)| k == "user")
        .map(|(_, v)| v.as_str());
    let mut out: Vec<(&str, &str)> = params
        .iter()
        .filter(|(k, _)| k != "user")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    out.insert(0, ("user", role));
    if !params.iter().any(|(k, _)| k == "database")
        && let Some(user) = agent_user
    {
        out.push(("database", user));
    }
    let mut buf = BytesMut::new();
    frontend::startup_message(out, &mut buf)?;
    Ok(buf.freeze())
}

/// Reads one whole message from the server into `buf`'s front.
async fn next<R>(rd: &mut R, buf: &mut BytesMut) -> Result<codec::Message, AuthError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    loop {
        match codec::decode(buf, MAX_AUTH_MESSAGE) {
            Ok(Some(msg)) => return Ok(msg),
            Ok(None) => {
                if rd.read_buf(buf).await? == 0 {
                    return Err(AuthError::Protocol(
                        "the server closed the connection during authentication".into(),
                    ));
                }
            }
            Err(e) => return Err(AuthError::Protocol(e.to_string())),
        }
    }
}

/// Logs in as `role` after the startup message was sent. Returns the
/// server's AuthenticationOk (for the agent); what the server sent after it
/// is left in `buf`.
pub async fn login<R, W>(
    rd: &mut R,
    wr: &mut W,
    buf: &mut BytesMut,
    role: &str,
    secret: &Secret,
) -> Result<Bytes, AuthError>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut scram: Option<sasl::ScramSha256> = None;
    loop {
        let msg = next(rd, buf).await?;
        match msg.tag() {
            tag::ERROR_RESPONSE => {
                let (code, message) = codec::error_fields(&msg);
                return Err(AuthError::Rejected {
                    role: role.to_owned(),
                    code,
                    message,
                });
            }
            tag::AUTHENTICATION => {}
            other => {
                return Err(AuthError::Protocol(format!(
                    "unexpected message {:?} before authentication ended",
                    char::from(other)
                )));
            }
        }
        let mut body = msg.body();
        if body.len() < 4 {
            return Err(AuthError::Protocol("short authentication request".into()));
        }
        let code = body.get_i32();
        let mut out = BytesMut::new();
        match code {
            AUTH_OK => return Ok(msg.raw),
            AUTH_CLEARTEXT => {
                frontend::password_message(secret.expose().as_bytes(), &mut out)?;
            }
            AUTH_MD5 => {
                let salt: [u8; 4] = body
                    .get(..4)
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(|| AuthError::Protocol("md5 request without a salt".into()))?;
                let hash = md5_hash(role.as_bytes(), secret.expose().as_bytes(), salt);
                frontend::password_message(hash.as_bytes(), &mut out)?;
            }
            AUTH_SASL => {
                let offered: Vec<&[u8]> =
                    body.split(|&b| b == 0).filter(|m| !m.is_empty()).collect();
                // Without channel binding: the agent's TLS ends here, and
                // the server does not require binding unless told to.
                if !offered.contains(&sasl::SCRAM_SHA_256.as_bytes()) {
                    let names: Vec<String> = offered
                        .iter()
                        .map(|m| String::from_utf8_lossy(m).into_owned())
                        .collect();
                    return Err(AuthError::Unsupported(format!(
                        "SASL mechanisms {}",
                        names.join(", ")
                    )));
                }
                let s = sasl::ScramSha256::new(
                    secret.expose().as_bytes(),
                    sasl::ChannelBinding::unsupported(),
                );
                frontend::sasl_initial_response(sasl::SCRAM_SHA_256, s.message(), &mut out)?;
                scram = Some(s);
            }
            AUTH_SASL_CONTINUE => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| AuthError::Protocol("SASL continue before start".into()))?;
                s.update(body)
                    .map_err(|e| AuthError::Protocol(format!("SCRAM: {e}")))?;
                frontend::sasl_response(s.message(), &mut out)?;
            }
            AUTH_SASL_FINAL => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| AuthError::Protocol("SASL final before start".into()))?;
                // Proves the server knew the secret too.
                s.finish(body)
                    .map_err(|e| AuthError::Protocol(format!("SCRAM server proof: {e}")))?;
                continue;
            }
            other => {
                let what = match other {
                    2 => "Kerberos V5".to_owned(),
                    7 | 8 => "GSSAPI".to_owned(),
                    9 => "SSPI".to_owned(),
                    n => format!("authentication method {n}"),
                };
                return Err(AuthError::Unsupported(what));
            }
        }
        wr.write_all(&out).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_names_the_role_and_keeps_the_database() {
        let params = vec![
            ("user".to_owned(), "agent".to_owned()),
            ("application_name".to_owned(), "psql".to_owned()),
        ];
        let raw = startup_for(&params, "app_rw").expect("startup");
        let mut buf = BytesMut::from(&raw[..]);
        let Ok(Some(codec::Startup::Startup { params, .. })) = codec::decode_startup(&mut buf)
        else {
            panic!("not a startup message");
        };
        let get = |k: &str| {
            params
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("user"), Some("app_rw"));
        assert_eq!(get("database"), Some("agent"));
        assert_eq!(get("application_name"), Some("psql"));
    }
}
