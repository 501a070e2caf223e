//! TLS on both sides of an intercepted connection.
//!
//! Towards the agent: a leaf certificate for the name the ClientHello asks
//! for, minted by the local agentguard CA (`agentguard ca init`) and cached
//! per name. Towards the server: rustls verifying against the system trust
//! store plus the target's `ca_file`. A server that fails verification is
//! never talked to in the clear or unverified: its requests are denied.

use std::{
    collections::HashMap,
    fs,
    io::Write as _,
    net::IpAddr,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    crypto::ring,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject as _};
use tracing::{info, warn};

/// Where `agentguard ca install` puts the CA for update-ca-certificates.
pub const SYSTEM_CA_PATH: &str = "/usr/local/share/ca-certificates/agentguard.crt";
const CA_NAME: &str = "agentguard local CA";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no agentguard CA in {0}: run `agentguard ca init` first")]
    NoCa(PathBuf),
    #[error("agentguard CA already exists in {0} (remove it to make a new one)")]
    CaExists(PathBuf),
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Pem { path: PathBuf, what: String },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("`{0}` is not a name a certificate can be made for")]
    BadName(String),
    #[error("update-ca-certificates failed: {0}")]
    Install(String),
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::File {
        path: path.to_owned(),
        source,
    }
}

pub fn ca_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("ca")
}

fn ca_params() -> CertificateParams {
    // Rebuilt identically at every load: the issuer name and key usages of
    // the leaves must match the stored certificate's.
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "agentguard");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// `agentguard ca init`: a new CA key (mode 0600) and certificate.
pub fn ca_init(state_dir: &Path) -> Result<PathBuf, TlsError> {
    let dir = ca_dir(state_dir);
    let (key_path, cert_path) = (dir.join("ca.key"), dir.join("ca.crt"));
    if key_path.exists() || cert_path.exists() {
        return Err(TlsError::CaExists(dir));
    }
    fs::create_dir_all(&dir).map_err(file_err(&dir))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(file_err(&dir))?;
    let key = KeyPair::generate()?;
    let mut params = ca_params();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    let cert = params.self_signed(&key)?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_path)
        .map_err(file_err(&key_path))?;
    f.write_all(key.serialize_pem().as_bytes())
        .map_err(file_err(&key_path))?;
    fs::write(&cert_path, cert.pem()).map_err(file_err(&cert_path))?;
    Ok(cert_path)
}

/// `agentguard ca export`: the CA certificate, PEM.
pub fn ca_export(state_dir: &Path) -> Result<String, TlsError> {
    let path = ca_dir(state_dir).join("ca.crt");
    if !path.exists() {
        return Err(TlsError::NoCa(ca_dir(state_dir)));
    }
    fs::read_to_string(&path).map_err(file_err(&path))
}

/// `agentguard ca install`: into the system store (Debian layout).
pub fn ca_install(state_dir: &Path) -> Result<PathBuf, TlsError> {
    let pem = ca_export(state_dir)?;
    let dst = Path::new(SYSTEM_CA_PATH);
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent).map_err(file_err(parent))?;
    }
    fs::write(dst, pem).map_err(file_err(dst))?;
    let out = std::process::Command::new("update-ca-certificates")
        .output()
        .map_err(|e| TlsError::Install(e.to_string()))?;
    if !out.status.success() {
        return Err(TlsError::Install(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(dst.to_owned())
}

/// The loaded CA and the leaves it minted.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    /// One key for every leaf: minting is then one signature.
    leaf_key: KeyPair,
    leaves: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl Ca {
    pub fn load(state_dir: &Path) -> Result<Self, TlsError> {
        let dir = ca_dir(state_dir);
        let (key_path, cert_path) = (dir.join("ca.key"), dir.join("ca.crt"));
        if !key_path.exists() {
            return Err(TlsError::NoCa(dir));
        }
        let key_pem = fs::read_to_string(&key_path).map_err(file_err(&key_path))?;
        let key = KeyPair::from_pem(&key_pem)?;
        let cert = CertificateDer::from_pem_file(&cert_path).map_err(|e| TlsError::Pem {
            path: cert_path.clone(),
            what: e.to_string(),
        })?;
        Ok(Self {
            issuer: Issuer::new(ca_params(), key),
            cert,
            leaf_key: KeyPair::generate()?,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The leaf for `name` (a DNS name or an IP), minted on first use.
    pub fn leaf(&self, name: &str) -> Result<Arc<CertifiedKey>, TlsError> {
        let mut leaves = self.leaves.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = leaves.get(name) {
            return Ok(Arc::clone(k));
        }
        let mut params = CertificateParams::new(vec![name.to_owned()])
            .map_err(|_| TlsError::BadName(name.to_owned()))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(30);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&self.leaf_key, &self.issuer)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der()));
        let signer = ring::sign::any_supported_type(&der)?;
        let certified = Arc::new(CertifiedKey::new(
            vec![cert.der().clone(), self.cert.clone()],
            signer,
        ));
        if leaves.len() > 10_000 {
            leaves.clear();
        }
        leaves.insert(name.to_owned(), Arc::clone(&certified));
        info!(name, "minted leaf certificate");
        Ok(certified)
    }

    /// A server config presenting the leaf for `name`, offering `alpn`.
    pub fn server_config(
        &self,
        name: &str,
        alpn: Vec<Vec<u8>>,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let key = self.leaf(name)?;
        let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(key)));
        config.alpn_protocols = alpn;
        Ok(Arc::new(config))
    }
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// Upstream trust: the system store once, plus per-target extra roots.
pub struct Upstream {
    system: Vec<CertificateDer<'static>>,
    per_target: Mutex<HashMap<PathBuf, Arc<ClientConfig>>>,
    default: Arc<ClientConfig>,
}

impl Upstream {
    pub fn new() -> Self {
        let loaded = rustls_native_certs::load_native_certs();
        for e in &loaded.errors {
            warn!("system trust store: {e}");
        }
        let system = loaded.certs;
        if system.is_empty() {
            warn!("no system root certificates found: only targets with ca_file can be verified");
        }
        let default = client_config(&system, &[]);
        Self {
            system,
            per_target: Mutex::new(HashMap::new()),
            default,
        }
    }

    /// The client config for a target (with its `ca_file` roots, if any).
    pub fn config(&self, ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
        let Some(path) = ca_file else {
            return Ok(Arc::clone(&self.default));
        };
        let mut cache = self.per_target.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.get(path) {
            return Ok(Arc::clone(c));
        }
        let extra = CertificateDer::pem_file_iter(path)
            .map_err(|e| TlsError::Pem {
                path: path.to_owned(),
                what: e.to_string(),
            })?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem {
                path: path.to_owned(),
                what: e.to_string(),
            })?;
        if extra.is_empty() {
            return Err(TlsError::Pem {
                path: path.to_owned(),
                what: "no certificate in the file".into(),
            });
        }
        let config = client_config(&self.system, &extra);
        cache.insert(path.to_owned(), Arc::clone(&config));
        Ok(config)
    }
}

impl Default for Upstream {
    fn default() -> Self {
        Self::new()
    }
}

fn client_config(
    system: &[CertificateDer<'static>],
    extra: &[CertificateDer<'static>],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    // Some distribution roots fail webpki's stricter parsing; skipping
    // them only narrows trust.
    let _ = roots.add_parsable_certificates(system.iter().cloned());
    let _ = roots.add_parsable_certificates(extra.iter().cloned());
    let provider = Arc::new(ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    // The ring provider supports the default versions; the fallback only
    // exists so no path here can panic.
    Arc::new(config.unwrap_or_else(|_| {
        ClientConfig::builder()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth()
    }))
}

/// Encrypts without verifying the server (PostgreSQL targets with
/// `tls = "require"`, libpq's sslmode=require): signatures are still
/// checked, the certificate chain and name are not.
pub fn unverified_client_config() -> Arc<ClientConfig> {
    let provider = Arc::new(ring::default_provider());
    let verifier = Arc::new(NoVerify(Arc::clone(&provider)));
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth()
        });
    Arc::new(config.unwrap_or_else(|_| {
        ClientConfig::builder()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth()
    }))
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The name to present and verify: the SNI, else the target's host.
pub fn server_name(name: &str) -> Result<rustls_pki_types::ServerName<'static>, TlsError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(rustls_pki_types::ServerName::IpAddress(ip.into()));
    }
    rustls_pki_types::ServerName::try_from(name.to_owned())
        .map_err(|_| TlsError::BadName(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_init_load_mint_and_key_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = ca_init(dir.path()).expect("init");
        assert!(cert.exists());
        let mode = fs::metadata(ca_dir(dir.path()).join("ca.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(ca_init(dir.path()), Err(TlsError::CaExists(_))));
        assert!(
            ca_export(dir.path())
                .expect("export")
                .contains("BEGIN CERTIFICATE")
        );
        let ca = Ca::load(dir.path()).expect("load");
        let a = ca.leaf("api.example.com").expect("leaf");
        let b = ca.leaf("api.example.com").expect("leaf");
        assert!(Arc::ptr_eq(&a, &b), "cached");
        ca.leaf("127.0.0.1").expect("ip leaf");
        assert!(ca.server_config("x.y", vec![b"h2".to_vec()]).is_ok());
    }

    #[test]
    fn missing_ca_says_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Ca::load(dir.path()).err().expect("no CA");
        assert!(err.to_string().contains("agentguard ca init"), "{err}");
    }

    #[test]
    fn ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("empty.pem");
        fs::write(&f, "nothing").expect("write");
        let up = Upstream {
            system: vec![],
            per_target: Mutex::new(HashMap::new()),
            default: client_config(&[], &[]),
        };
        assert!(up.config(Some(&f)).is_err());
        ca_init(dir.path()).expect("init");
        let pem = ca_dir(dir.path()).join("ca.crt");
        assert!(up.config(Some(&pem)).is_ok());
    }
}
