//! Credentials the guard holds so agents never do: `[[credentials]]` in the
//! config names a target and where the secret lives (a file only agentguard
//! can read, a systemd credential, or a command the daemon runs). The
//! PostgreSQL guard authenticates upstream with it; the HTTP guard replaces
//! whatever credential header the agent sent with it.
//!
//! A secret is never logged, recorded or put in policy input: policy sees
//! [`CredentialUse`] (the credential's name, `injected: true`). Its `Debug`
//! is `[secret]`. A rotated file is picked up on the next use (the file is
//! looked at once a second at most); connections already open keep the
//! secret they authenticated with.

use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};

/// How often a secret file is looked at again (rotation), at most.
const RESTAT: Duration = Duration::from_secs(1);

/// `[[credentials]]`: one secret for one target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    pub name: String,
    /// The `[[targets]]` name it is injected on.
    pub target: String,
    /// A file readable by agentguard only (mode 0600 or 0400); the first
    /// line is the secret.
    pub file: Option<PathBuf>,
    /// A systemd credential id: `$CREDENTIALS_DIRECTORY/<id>` (the unit's
    /// `LoadCredential=` / `SetCredentialEncrypted=`).
    pub systemd: Option<String>,
    /// A program the daemon runs (a vault helper): its stdout is the secret.
    #[serde(default)]
    pub command: Vec<String>,
    /// Seconds a command's answer is used before it is run again.
    #[serde(default = "default_refresh")]
    pub refresh_secs: u64,
    /// PostgreSQL: the real role the guard logs in as.
    pub role: Option<String>,
    /// PostgreSQL: the user name the agent connects as that maps to `role`;
    /// unset: any user the agent names.
    pub db_user: Option<String>,
    /// HTTP: how the secret is set on each request.
    #[serde(default)]
    pub inject: HttpInject,
    /// `inject = "header"`: the header's name (e.g. `x-api-key`).
    pub header: Option<String>,
    /// `inject = "query"`: the query parameter's name (e.g. `key`).
    pub query: Option<String>,
    /// `inject = "basic"`: the user name (the secret is the password).
    pub username: Option<String>,
}

fn default_refresh() -> u64 {
    300
}

/// How an HTTP credential travels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpInject {
    /// `Authorization: Bearer <secret>` (OpenAI-style APIs, Kubernetes).
    #[default]
    Bearer,
    /// `Authorization: Basic base64(username:secret)`.
    Basic,
    /// `<header>: <secret>` (Anthropic's `x-api-key`).
    Header,
    /// `?<query>=<secret>` (Google-style `key=`).
    Query,
}

/// What policy input says about a credential (never the secret).
#[derive(Debug, Clone, Serialize)]
pub struct CredentialUse {
    pub name: String,
    /// The guard set the credential on the agent's behalf.
    pub injected: bool,
    /// HTTP: the agent sent a credential of its own (it was removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_sent: Option<bool>,
    /// PostgreSQL: the user name the agent asked for (`db_user` is the
    /// real role).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_db_user: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("credential `{name}`: {message}")]
    Unusable { name: String, message: String },
}

fn unusable(name: &str, message: impl Into<String>) -> CredentialError {
    CredentialError::Unusable {
        name: name.to_owned(),
        message: message.into(),
    }
}

/// A secret, shared by the connections that use it; `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(Arc<SecretString>);

impl Secret {
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[secret]")
    }
}

enum Source {
    File(PathBuf),
    Command {
        argv: Vec<String>,
        refresh: Duration,
    },
}

struct Cached {
    secret: Secret,
    /// File: what it was read from (mtime, size, inode); a change is a
    /// rotation.
    stamp: Option<(SystemTime, u64, u64)>,
    checked: Instant,
}

/// One configured credential.
pub struct Credential {
    pub config: CredentialConfig,
    source: Source,
    cached: Mutex<Cached>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.config.name)
            .field("target", &self.config.target)
            .finish_non_exhaustive()
    }
}

impl Credential {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The current secret: the file looked at again if a second has passed
    /// (rotation), the command run again once its answer is old. An error
    /// (the file is gone, or now readable by others) fails the use: no
    /// stale or exposed secret is sent.
    pub async fn secret(self: &Arc<Self>) -> Result<Secret, CredentialError> {
        let (stale, stamp) = {
            let cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
            let age = cached.checked.elapsed();
            match &self.source {
                Source::File(_) if age < RESTAT => return Ok(cached.secret.clone()),
                Source::Command { refresh, .. } if age < *refresh => {
                    return Ok(cached.secret.clone());
                }
                _ => (cached.secret.clone(), cached.stamp),
            }
        };
        let this = Arc::clone(self);
        let fresh = tokio::task::spawn_blocking(move || this.refresh(stamp))
            .await
            .map_err(|e| unusable(self.name(), format!("reading the secret: {e}")))?;
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        match fresh? {
            Some(new) => {
                if stale.expose() != new.secret.expose() {
                    tracing::info!(credential = %self.name(), "secret rotated");
                }
                *cached = new;
            }
            None => cached.checked = Instant::now(),
        }
        Ok(cached.secret.clone())
    }

    /// `None`: the file is unchanged since `stamp`.
    fn refresh(
        &self,
        stamp: Option<(SystemTime, u64, u64)>,
    ) -> Result<Option<Cached>, CredentialError> {
        let name = self.name();
        match &self.source {
            Source::File(path) => {
                let meta = checked_file(name, path)?;
                let now = stamp_of(&meta);
                if Some(now) == stamp {
                    return Ok(None);
                }
                read_file(name, path).map(Some)
            }
            Source::Command { argv, .. } => run_command(name, argv).map(Some),
        }
    }
}

fn stamp_of(meta: &fs::Metadata) -> (SystemTime, u64, u64) {
    (
        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        meta.len(),
        meta.ino(),
    )
}

/// A secret file must be a regular file no group or other can read.
fn checked_file(name: &str, path: &Path) -> Result<fs::Metadata, CredentialError> {
    let meta = fs::metadata(path)
        .map_err(|e| unusable(name, format!("cannot read {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(unusable(
            name,
            format!("{} is not a regular file", path.display()),
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(unusable(
            name,
            format!(
                "{} is readable by group or others (mode {mode:04o}); a secret must be readable by agentguard only: chmod 600 {}",
                path.display(),
                path.display()
            ),
        ));
    }
    Ok(meta)
}

fn read_file(name: &str, path: &Path) -> Result<Cached, CredentialError> {
    let meta = checked_file(name, path)?;
    let text = fs::read_to_string(path)
        .map_err(|e| unusable(name, format!("cannot read {}: {e}", path.display())))?;
    Ok(Cached {
        secret: secret_from(name, &text, &path.display().to_string())?,
        stamp: Some(stamp_of(&meta)),
        checked: Instant::now(),
    })
}

fn run_command(name: &str, argv: &[String]) -> Result<Cached, CredentialError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(unusable(name, "`command` is empty"));
    };
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| unusable(name, format!("cannot run {program}: {e}")))?;
    if !out.status.success() {
        // Its stderr's first line only: a helper may print more than it should.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().next().unwrap_or("").trim();
        return Err(unusable(
            name,
            format!("{program} failed ({}): {first}", out.status),
        ));
    }
    let text = String::from_utf8(out.stdout).map_err(|_| {
        unusable(
            name,
            format!("{program} printed a secret that is not UTF-8"),
        )
    })?;
    Ok(Cached {
        secret: secret_from(name, &text, program)?,
        stamp: None,
        checked: Instant::now(),
    })
}

/// The first line, without its line end; empty or with control bytes is an
/// error (it would break a header or a password message).
fn secret_from(name: &str, text: &str, from: &str) -> Result<Secret, CredentialError> {
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        return Err(unusable(name, format!("{from} holds no secret (empty)")));
    }
    if line.bytes().any(|b| b.is_ascii_control()) {
        return Err(unusable(
            name,
            format!("{from}: the secret holds control characters"),
        ));
    }
    Ok(Secret(Arc::new(SecretString::from(line.to_owned()))))
}

/// Every configured credential, opened (read once, checked) at start.
#[derive(Debug, Clone, Default)]
pub struct Store {
    all: Arc<Vec<Arc<Credential>>>,
}

impl Store {
    /// Reads and checks every secret: a missing, unreadable or too-open
    /// file, an unset `$CREDENTIALS_DIRECTORY` or a failing command is an
    /// error naming the credential (the guard does not start without it).
    pub fn open(configs: &[CredentialConfig]) -> Result<Self, CredentialError> {
        let mut all = Vec::with_capacity(configs.len());
        for c in configs {
            let source = match (&c.file, &c.systemd, c.command.is_empty()) {
                (Some(path), None, true) => Source::File(path.clone()),
                (None, Some(id), true) => {
                    let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                        unusable(
                            &c.name,
                            format!(
                                "systemd = \"{id}\" but $CREDENTIALS_DIRECTORY is unset: run agentguard as a systemd service with `LoadCredential={id}:/path/to/secret` in its unit"
                            ),
                        )
                    })?;
                    Source::File(Path::new(&dir).join(id))
                }
                (None, None, false) => Source::Command {
                    argv: c.command.clone(),
                    refresh: Duration::from_secs(c.refresh_secs.max(1)),
                },
                _ => {
                    return Err(unusable(
                        &c.name,
                        "set exactly one of `file`, `systemd` or `command`",
                    ));
                }
            };
            let cached = match &source {
                Source::File(path) => read_file(&c.name, path)?,
                Source::Command { argv, .. } => run_command(&c.name, argv)?,
            };
            all.push(Arc::new(Credential {
                config: c.clone(),
                source,
                cached: Mutex::new(cached),
            }));
        }
        Ok(Self { all: Arc::new(all) })
    }

    /// The credentials injected on a target.
    pub fn for_target(&self, target: Option<&str>) -> Vec<Arc<Credential>> {
        let Some(target) = target else {
            return Vec::new();
        };
        self.all
            .iter()
            .filter(|c| c.config.target == target)
            .cloned()
            .collect()
    }
}

/// The PostgreSQL credential for the user an agent named: one whose
/// `db_user` is that name, else one for any user.
pub fn for_db_user<'a>(creds: &'a [Arc<Credential>], user: &str) -> Option<&'a Arc<Credential>> {
    creds
        .iter()
        .find(|c| c.config.db_user.as_deref() == Some(user))
        .or_else(|| creds.iter().find(|c| c.config.db_user.is_none()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_config(name: &str, path: &Path) -> CredentialConfig {
        toml::from_str(&format!(
            "name = \"{name}\"\ntarget = \"t\"\nfile = \"{}\"\n",
            path.display()
        ))
        .expect("config")
    }

    fn write(path: &Path, text: &str, mode: u32) {
        fs::write(path, text).expect("write");
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[tokio::test]
    async fn file_is_checked_read_and_rotated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        write(&path, "sk-first\n", 0o600);
        let store = Store::open(&[file_config("llm", &path)]).expect("opens");
        let cred = store.for_target(Some("t")).pop().expect("one");
        assert_eq!(cred.secret().await.expect("secret").expose(), "sk-first");
        assert_eq!(format!("{:?}", cred.secret().await.expect("s")), "[secret]");

        // Rotation: a new file (rename over) is seen within a second.
        let next = dir.path().join("key.new");
        write(&next, "sk-second\r\n", 0o400);
        fs::rename(&next, &path).expect("rename");
        std::thread::sleep(RESTAT + Duration::from_millis(50));
        assert_eq!(cred.secret().await.expect("secret").expose(), "sk-second");

        // Made readable by others: the secret is no longer used.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        std::thread::sleep(RESTAT + Duration::from_millis(50));
        let err = cred.secret().await.expect_err("too open").to_string();
        assert!(err.contains("`llm`") && err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        let err = Store::open(&[file_config("db", &path)])
            .expect_err("missing")
            .to_string();
        assert!(err.starts_with("credential `db`: cannot read"), "{err}");
        assert!(!err.contains("(os error 2): No such"), "cause once: {err}");
        write(&path, "pw\n", 0o644);
        let err = Store::open(&[file_config("db", &path)])
            .expect_err("world-readable")
            .to_string();
        assert!(
            err.contains("mode 0644") && err.contains("chmod 600"),
            "{err}"
        );
        write(&path, "\n", 0o600);
        let err = Store::open(&[file_config("db", &path)])
            .expect_err("empty")
            .to_string();
        assert!(err.contains("empty"), "{err}");
    }

    #[test]
    fn systemd_without_credentials_directory_says_what_to_add() {
        // SAFETY: this test binary's other tests do not read this variable.
        unsafe { std::env::remove_var("CREDENTIALS_DIRECTORY") };
        let c: CredentialConfig =
            toml::from_str("name = \"k\"\ntarget = \"t\"\nsystemd = \"k\"\n").expect("config");
        let err = Store::open(&[c]).expect_err("unset").to_string();
        assert!(err.contains("LoadCredential=k:"), "{err}");
    }

    #[tokio::test]
    async fn command_output_is_the_secret() {
        let c: CredentialConfig = toml::from_str(
            "name = \"v\"\ntarget = \"t\"\ncommand = [\"/bin/echo\", \"from-vault\"]\n",
        )
        .expect("config");
        let store = Store::open(&[c]).expect("runs");
        let cred = store.for_target(Some("t")).pop().expect("one");
        assert_eq!(cred.secret().await.expect("secret").expose(), "from-vault");
        let c: CredentialConfig =
            toml::from_str("name = \"v\"\ntarget = \"t\"\ncommand = [\"/bin/false\"]\n")
                .expect("config");
        let err = Store::open(&[c]).expect_err("fails").to_string();
        assert!(err.contains("credential `v`: /bin/false failed"), "{err}");
    }

    #[test]
    fn exactly_one_source() {
        let c: CredentialConfig = toml::from_str(
            "name = \"x\"\ntarget = \"t\"\nfile = \"/f\"\ncommand = [\"/bin/true\"]\n",
        )
        .expect("config");
        assert!(Store::open(&[c]).is_err());
    }

    #[test]
    fn db_user_mapping_prefers_the_exact_user() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pw");
        write(&path, "pw", 0o600);
        let mut any = file_config("any", &path);
        any.role = Some("app".into());
        let mut exact = file_config("exact", &path);
        exact.db_user = Some("agent".into());
        let store = Store::open(&[any, exact]).expect("opens");
        let creds = store.for_target(Some("t"));
        assert_eq!(
            for_db_user(&creds, "agent").map(|c| c.name()),
            Some("exact")
        );
        assert_eq!(for_db_user(&creds, "other").map(|c| c.name()), Some("any"));
        assert!(store.for_target(Some("u")).is_empty());
    }
}
