//! TLS for the client and peer listeners (rustls), from etcd's flags: certificate,
//! key, trusted CA, client-certificate authentication, auto TLS, versions and
//! cipher suites.
//!
//! Files are checked when the server starts (a missing, unreadable or mismatched
//! file stops it, naming the file) and watched afterwards: when a certificate, key
//! or CA bundle changes on disk, the next connection is served with the new one,
//! without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::TlsInfo;

mod verify;
pub mod x509;

#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    #[error("{file}: {detail}")]
    File { file: PathBuf, detail: String },
    #[error("{0}")]
    Config(String),
}

fn file_err(file: &Path, detail: impl ToString) -> TlsError {
    TlsError::File {
        file: file.to_path_buf(),
        detail: detail.to_string(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads a PEM certificate chain, refusing an empty or unreadable file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|e| file_err(path, e))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(path, "no certificate found"));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = std::fs::read(path).map_err(|e| file_err(path, e))?;
    PrivateKeyDer::from_pem_slice(&data)
        .map_err(|e| file_err(path, format!("no usable private key: {e}")))
}

/// Certificate revocation lists (`--client-crl-file`, `--peer-crl-file`), PEM or DER.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|e| file_err(path, e))?;
    let pem: Vec<CertificateRevocationListDer<'static>> =
        CertificateRevocationListDer::pem_slice_iter(&data)
            .collect::<Result<_, _>>()
            .map_err(|e| file_err(path, format!("not a PEM CRL file: {e}")))?;
    if !pem.is_empty() {
        return Ok(pem);
    }
    if data.first() == Some(&0x30) {
        return Ok(vec![CertificateRevocationListDer::from(data)]);
    }
    Err(file_err(path, "no certificate revocation list found"))
}

pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots
            .add(c)
            .map_err(|e| file_err(path, format!("bad CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

fn versions(
    min: Option<&str>,
    max: Option<&str>,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, TlsError> {
    let rank = |v: &str| match v {
        "TLS1.2" => Ok(2),
        "TLS1.3" => Ok(3),
        "TLS1.0" | "TLS1.1" => Err(TlsError::Config(format!(
            "TLS version {v} is not supported; use TLS1.2 or TLS1.3"
        ))),
        other => Err(TlsError::Config(format!("unknown TLS version {other:?}"))),
    };
    let lo = min
        .filter(|s| !s.is_empty())
        .map(rank)
        .transpose()?
        .unwrap_or(2);
    let hi = max
        .filter(|s| !s.is_empty())
        .map(rank)
        .transpose()?
        .unwrap_or(3);
    if lo > hi {
        return Err(TlsError::Config(
            "--tls-min-version is newer than --tls-max-version".into(),
        ));
    }
    let mut v = Vec::new();
    if lo <= 2 && hi >= 2 {
        v.push(&rustls::version::TLS12);
    }
    if hi >= 3 {
        v.push(&rustls::version::TLS13);
    }
    Ok(v)
}

/// Restricts the provider to the named cipher suites (Go's names, as etcd takes
/// them); TLS 1.3 suites always stay.
fn with_suites(names: &[String]) -> Result<Arc<rustls::crypto::CryptoProvider>, TlsError> {
    let mut p = rustls::crypto::ring::default_provider();
    if names.is_empty() {
        return Ok(Arc::new(p));
    }
    use rustls::CipherSuite as C;
    let mut keep = Vec::new();
    for n in names {
        let s = match n.as_str() {
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305"
            | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
                C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            }
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305"
            | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
                C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            }
            other => {
                return Err(TlsError::Config(format!(
                    "unsupported cipher suite {other:?} in --cipher-suites"
                )));
            }
        };
        keep.push(s);
    }
    p.cipher_suites
        .retain(|cs| cs.version() == &rustls::version::TLS13 || keep.contains(&cs.suite()));
    Ok(Arc::new(p))
}

/// Self-signed certificate for `--auto-tls`/`--peer-auto-tls`, kept under the data
/// directory like etcd's `fixtures/`.
pub fn auto_tls(dir: &Path, hosts: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let mut names: Vec<String> = hosts.to_vec();
    names.push("localhost".into());
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| TlsError::Config(format!("cannot generate a self-signed certificate: {e}")))?;
    std::fs::write(&cert, ck.cert.pem()).map_err(|e| file_err(&cert, e))?;
    write_private(&key, ck.key_pair.serialize_pem().as_bytes())?;
    Ok((cert, key))
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| file_err(path, e))?;
    f.write_all(data).map_err(|e| file_err(path, e))
}

/// The files a TLS configuration depends on, with their modification times.
fn stamp(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

struct Loaded {
    checked: Instant,
    stamps: Vec<Option<SystemTime>>,
    config: Arc<ServerConfig>,
}

/// A server-side TLS configuration that follows its files on disk.
pub struct ServerTls {
    info: TlsInfo,
    cert: PathBuf,
    key: PathBuf,
    suites: Vec<String>,
    min: Option<String>,
    max: Option<String>,
    alpn: Vec<Vec<u8>>,
    state: Mutex<Loaded>,
}

impl ServerTls {
    /// Builds the configuration; `cert`/`key` come from the flags or auto TLS.
    pub fn new(
        info: &TlsInfo,
        cert: PathBuf,
        key: PathBuf,
        suites: &[String],
        min: Option<String>,
        max: Option<String>,
        alpn: Vec<Vec<u8>>,
    ) -> Result<Arc<ServerTls>, TlsError> {
        let mut t = ServerTls {
            info: info.clone(),
            cert,
            key,
            suites: suites.to_vec(),
            min,
            max,
            alpn,
            state: Mutex::new(Loaded {
                checked: Instant::now(),
                stamps: vec![],
                config: Arc::new(
                    ServerConfig::builder_with_provider(provider())
                        .with_safe_default_protocol_versions()
                        .map_err(|e| TlsError::Config(e.to_string()))?
                        .with_no_client_auth()
                        .with_cert_resolver(Arc::new(
                            rustls::server::ResolvesServerCertUsingSni::new(),
                        )),
                ),
            }),
        };
        let config = t.build()?;
        t.state = Mutex::new(Loaded {
            checked: Instant::now(),
            stamps: stamp(&t.files()),
            config,
        });
        Ok(Arc::new(t))
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut f = vec![self.cert.clone(), self.key.clone()];
        if let Some(ca) = &self.info.trusted_ca_file {
            f.push(ca.clone());
        }
        if let Some(crl) = &self.info.crl_file {
            f.push(crl.clone());
        }
        f
    }

    fn build(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let certs = load_certs(&self.cert)?;
        let key = load_key(&self.key)?;
        let builder = ServerConfig::builder_with_provider(with_suites(&self.suites)?)
            .with_protocol_versions(&versions(self.min.as_deref(), self.max.as_deref())?)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match (&self.info.trusted_ca_file, self.info.client_cert_auth) {
            (Some(ca), true) => {
                let mut vb =
                    WebPkiClientVerifier::builder_with_provider(load_roots(ca)?, provider());
                let crls = match &self.info.crl_file {
                    Some(crl) => load_crls(crl)?,
                    None => Vec::new(),
                };
                if !crls.is_empty() {
                    // As etcd: a certificate whose serial the list names is refused;
                    // certificates of issuers the list does not cover are not.
                    vb = vb
                        .with_crls(crls.clone())
                        .only_check_end_entity_revocation()
                        .allow_unknown_revocation_status();
                }
                let v = vb.build().map_err(|e| match (&e, &self.info.crl_file) {
                    (rustls::server::VerifierBuilderError::InvalidCrl(_), Some(crl)) => {
                        file_err(crl, e)
                    }
                    _ => file_err(ca, e),
                })?;
                builder.with_client_cert_verifier(verify::ClientVerifier::new(
                    v,
                    load_certs(ca)?,
                    crls,
                ))
            }
            (None, true) => {
                return Err(TlsError::Config(
                    "client certificate authentication needs --trusted-ca-file".into(),
                ));
            }
            _ => builder.with_no_client_auth(),
        };
        let mut cfg = builder.with_single_cert(certs, key).map_err(|e| {
            file_err(
                &self.key,
                format!("does not match certificate {}: {e}", self.cert.display()),
            )
        })?;
        cfg.alpn_protocols = self.alpn.clone();
        Ok(Arc::new(cfg))
    }

    /// The configuration for a new connection, re-read when a file changed (checked
    /// at most once a second). A broken new file keeps the previous configuration.
    pub fn config(&self) -> Arc<ServerConfig> {
        let mut st = self.state.lock();
        if st.checked.elapsed() >= Duration::from_secs(1) {
            st.checked = Instant::now();
            let now = stamp(&self.files());
            if now != st.stamps {
                match self.build() {
                    Ok(c) => {
                        crate::info!("reloaded TLS certificates", cert_file = self.cert.display());
                        st.config = c;
                        st.stamps = now;
                    }
                    Err(e) => {
                        crate::warn!(
                            "cannot reload TLS certificates; keeping the previous ones",
                            error = e
                        );
                    }
                }
            }
        }
        st.config.clone()
    }

    /// `--peer-cert-allowed-cn`, `--peer-cert-allowed-hostname` and
    /// `--client-cert-allowed-hostname`: whether a connection whose certificate
    /// chain verified may go on, judged by its leaf certificate.
    pub fn admits(&self, cert: Option<&CertificateDer<'_>>) -> Result<(), String> {
        admits(
            &self.info.allowed_cns(),
            &self.info.allowed_hostnames(),
            cert,
        )
    }
}

/// With neither list set, every certificate the CA signed may connect;
/// otherwise one of the allowed common names, or one of the host names the
/// certificate is valid for (its DNS or IP subject alternative names, wildcards
/// as TLS clients match them), must match.
pub fn admits(
    allowed_cn: &[&str],
    allowed_hostname: &[&str],
    cert: Option<&CertificateDer<'_>>,
) -> Result<(), String> {
    if allowed_cn.is_empty() && allowed_hostname.is_empty() {
        return Ok(());
    }
    let Some(cert) = cert else {
        return Err("no client certificate".into());
    };
    let cn = x509::subject_common_name(cert);
    if cn.as_deref().is_some_and(|cn| allowed_cn.contains(&cn)) {
        return Ok(());
    }
    if let Ok(ee) = webpki::EndEntityCert::try_from(cert) {
        for host in allowed_hostname {
            if let Ok(name) = rustls::pki_types::ServerName::try_from(*host)
                && ee.verify_is_valid_for_subject_name(&name).is_ok()
            {
                return Ok(());
            }
        }
    }
    Err(format!(
        "certificate (common name {:?}) has none of the allowed common names or host names",
        cn.unwrap_or_default()
    ))
}

/// Client-side TLS for peer connections: the member's certificate as client
/// identity, the peer CA as roots.
pub fn peer_client_config(
    cert: &Path,
    key: &Path,
    ca: Option<&Path>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match ca {
        Some(ca) => {
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                load_roots(ca)?,
                provider(),
            )
            .build()
            .map_err(|e| file_err(ca, e))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(verify::ServerVerifier::new(
                    webpki,
                    load_certs(ca)?,
                ))
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider()))),
    };
    let cfg = builder
        .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| file_err(key, e))?;
    Ok(Arc::new(cfg))
}

/// Accepts any server certificate: only for `--peer-auto-tls` without a CA, as
/// etcd does (its auto TLS skips verification).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
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

/// The server TLS for a listener group from its flags: explicit certificate and
/// key, or a self-signed pair under `auto_dir` with `--auto-tls`. None when
/// neither is configured.
pub fn server_from_flags(
    info: &TlsInfo,
    auto_dir: &Path,
    hosts: &[String],
    cfg: &crate::config::Config,
    alpn: Vec<Vec<u8>>,
) -> Result<Option<Arc<ServerTls>>, TlsError> {
    let (cert, key) = match (&info.cert_file, &info.key_file) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        (Some(c), None) => return Err(file_err(c, "a certificate needs its key file too")),
        (None, Some(k)) => return Err(file_err(k, "a key needs its certificate file too")),
        (None, None) if info.auto_tls => auto_tls(auto_dir, hosts)?,
        (None, None) => return Ok(None),
    };
    ServerTls::new(
        info,
        cert,
        key,
        &cfg.cipher_suites,
        cfg.tls_min_version.clone(),
        cfg.tls_max_version.clone(),
        alpn,
    )
    .map(Some)
}

/// Host names and addresses of a URL list, for self-signed certificates.
pub fn hosts_of(urls: &[String]) -> Vec<String> {
    urls.iter()
        .map(|u| {
            let hp = crate::raft::transport::host_port(u);
            hp.rsplit_once(':')
                .map(|(h, _)| h.to_string())
                .unwrap_or(hp)
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        })
        .collect()
}

/// Go's text for a TLS alert (crypto/tls `alert.Error`).
fn go_alert(a: rustls::AlertDescription) -> String {
    let n = u8::from(a);
    let t = match n {
        0 => "close notify",
        10 => "unexpected message",
        20 => "bad record MAC",
        21 => "decryption failed",
        22 => "record overflow",
        30 => "decompression failure",
        40 => "handshake failure",
        42 => "bad certificate",
        43 => "unsupported certificate",
        44 => "revoked certificate",
        45 => "expired certificate",
        46 => "unknown certificate",
        47 => "illegal parameter",
        48 => "unknown certificate authority",
        49 => "access denied",
        50 => "error decoding message",
        51 => "error decrypting message",
        70 => "protocol version not supported",
        71 => "insufficient security level",
        80 => "internal error",
        86 => "inappropriate fallback",
        90 => "user canceled",
        100 => "no renegotiation",
        109 => "missing extension",
        110 => "unsupported extension",
        112 => "unrecognized name",
        116 => "certificate required",
        120 => "no application protocol",
        _ => return format!("alert({n})"),
    };
    t.to_string()
}

/// A failed TLS handshake in the words of Go's crypto/tls, as etcd logs it:
/// `remote error: tls: bad certificate` when the other side refused this
/// side's certificate, `tls: failed to verify client certificate: x509: ...`
/// when this side (`server`) refused the client's, the bare x509 reason when
/// this side (a client) refused the server's.
pub fn handshake_error_text(e: &std::io::Error, server: bool) -> String {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return "EOF".to_string();
    }
    let Some(r) = e.get_ref().and_then(|r| r.downcast_ref::<rustls::Error>()) else {
        return e.to_string();
    };
    match r {
        rustls::Error::AlertReceived(a) => format!("remote error: tls: {}", go_alert(*a)),
        rustls::Error::NoCertificatesPresented => {
            "tls: client didn't provide a certificate".to_string()
        }
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
            "tls: first record does not look like a TLS handshake".to_string()
        }
        rustls::Error::InvalidCertificate(c) => {
            let reason = verify::refusal_reason(r)
                .map(str::to_string)
                .unwrap_or_else(|| verify::x509_text(c));
            if server {
                format!("tls: failed to verify client certificate: {reason}")
            } else {
                reason
            }
        }
        other => other.to_string(),
    }
}

/// How long the same refusal (remote host and reason) is not logged again.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// When each refusal was last logged.
static REFUSALS_LOGGED: Mutex<Option<std::collections::HashMap<(String, String), Instant>>> =
    Mutex::new(None);

/// Logs a refused TLS handshake as etcd does (`rejected connection`, at warn,
/// with `remote-addr`, `server-name` and `error`), once per
/// [`REFUSAL_LOG_INTERVAL`] for the same remote host and reason, so a peer
/// or client that keeps reconnecting does not flood the log.
pub fn log_handshake_failure(remote: &crate::net::Remote, server_name: &str, e: &std::io::Error) {
    let error = handshake_error_text(e, true);
    let host = match remote {
        crate::net::Remote::Tcp(a) => a.ip().to_string(),
        crate::net::Remote::Unix => remote.to_string(),
    };
    {
        let mut logged = REFUSALS_LOGGED.lock();
        let logged = logged.get_or_insert_with(Default::default);
        let now = Instant::now();
        if logged.len() >= 4096 {
            logged.retain(|_, t| now.duration_since(*t) < REFUSAL_LOG_INTERVAL);
        }
        match logged.get(&(host.clone(), error.clone())) {
            Some(t) if now.duration_since(*t) < REFUSAL_LOG_INTERVAL => return,
            _ => {
                logged.insert((host, error.clone()), now);
            }
        }
    }
    crate::log::emit(
        crate::log::Level::Warn,
        "rejected connection",
        &[
            ("remote-addr", remote.to_string()),
            ("server-name", server_name.to_string()),
            ("error", error),
        ],
    );
}

/// The server side of a TLS handshake with the configuration current now;
/// on failure, the server name the client asked for (empty without SNI) and
/// the error.
pub async fn accept<IO>(
    tls: &ServerTls,
    io: IO,
) -> Result<tokio_rustls::server::TlsStream<IO>, (String, std::io::Error)>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io)
        .await
        .map_err(|e| (String::new(), e))?;
    let name = start
        .client_hello()
        .server_name()
        .unwrap_or_default()
        .to_string();
    start.into_stream(tls.config()).await.map_err(|e| (name, e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn refused_handshakes_in_go_words() {
        use rustls::{AlertDescription, CertificateError, Error};
        let io = |e: Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let refused =
            super::verify::refused(Error::InvalidCertificate(CertificateError::UnknownIssuer));
        // The other side hears bad_certificate, as from Go.
        let Error::InvalidCertificate(c) = &refused else {
            panic!("{refused:?}");
        };
        assert_eq!(
            AlertDescription::from(c.clone()),
            AlertDescription::BadCertificate
        );
        assert_eq!(
            super::handshake_error_text(&io(refused.clone()), true),
            "tls: failed to verify client certificate: x509: certificate signed by unknown authority"
        );
        assert_eq!(
            super::handshake_error_text(&io(refused), false),
            "x509: certificate signed by unknown authority"
        );
        assert_eq!(
            super::handshake_error_text(
                &io(Error::AlertReceived(AlertDescription::BadCertificate)),
                true
            ),
            "remote error: tls: bad certificate"
        );
        assert_eq!(
            super::handshake_error_text(
                &io(Error::AlertReceived(AlertDescription::UnknownCA)),
                false
            ),
            "remote error: tls: unknown certificate authority"
        );
        assert_eq!(
            super::handshake_error_text(&io(Error::NoCertificatesPresented), true),
            "tls: client didn't provide a certificate"
        );
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(super::handshake_error_text(&eof, true), "EOF");
        let expired = super::verify::x509_text(&CertificateError::ExpiredContext {
            time: rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                1_609_545_600,
            )),
            not_after: rustls::pki_types::UnixTime::since_unix_epoch(
                std::time::Duration::from_secs(1_609_459_200),
            ),
        });
        assert_eq!(
            expired,
            "x509: certificate has expired or is not yet valid: current time \
             2021-01-02T00:00:00Z is after 2021-01-01T00:00:00Z"
        );
    }

    #[test]
    fn allowed_common_names_and_host_names() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p =
            rcgen::CertificateParams::new(vec!["m1.etcd.example".to_string()]).expect("params");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "member-1");
        let cert = p.self_signed(&key).expect("cert");
        let der = cert.der();
        assert_eq!(super::admits(&[], &[], Some(der)), Ok(()));
        assert_eq!(super::admits(&[], &[], None), Ok(()));
        assert_eq!(super::admits(&["member-1"], &[], Some(der)), Ok(()));
        assert_eq!(
            super::admits(&[], &["*.etcd.example", "m1.etcd.example"], Some(der)),
            Ok(())
        );
        assert!(super::admits(&["member-2"], &[], Some(der)).is_err());
        assert!(super::admits(&[], &["m2.etcd.example"], Some(der)).is_err());
        assert!(super::admits(&["member-1"], &[], None).is_err());
        let e = super::admits(&["x"], &["y"], Some(der)).unwrap_err();
        assert!(e.contains("\"member-1\""), "{e}");
    }
}
