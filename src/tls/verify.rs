//! Certificate chain verification as Go's crypto/x509 does it where webpki is
//! stricter: a certificate that is itself in the trusted CA bundle (a
//! self-signed `CA:TRUE` certificate used as a member's or a client's own
//! certificate, as small deployments and etcd's test fixtures do) is accepted as
//! a chain of one, when it is within its validity period, its extended key
//! usages allow the purpose, no revocation list names it, and (for a server)
//! it is valid for the name dialled. Everything else is webpki's verdict.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::x509::{self, Purpose};

/// Marks a refusal made by [`refused`].
const REFUSAL_MARK: &str = "\0x509";

/// A certificate refusal as Go makes it: the peer is sent a `bad_certificate`
/// alert whatever the reason (rustls sends `unknown_ca`, `certificate_expired`
/// and others, which a peer would log differently than it logs etcd's
/// refusals), and the reason, in Go's words, stays for the log line. The
/// error rustls turns into a `bad_certificate` alert carries it.
pub(super) fn refused(e: rustls::Error) -> rustls::Error {
    match e {
        rustls::Error::InvalidCertificate(ce) => {
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext {
                expected: ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()),
                presented: vec![REFUSAL_MARK.to_string(), x509_text(&ce)],
            })
        }
        other => other,
    }
}

/// The reason a certificate was refused in Go's words, when [`refused`] made
/// the error.
pub fn refusal_reason(e: &rustls::Error) -> Option<&str> {
    match e {
        rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext {
            presented,
            ..
        }) if presented.len() == 2 && presented[0] == REFUSAL_MARK => Some(&presented[1]),
        _ => None,
    }
}

/// RFC 3339 in seconds, as Go prints times in certificate errors.
fn go_time(t: UnixTime) -> String {
    let ms = crate::log::rfc3339_millis(t.as_secs().saturating_mul(1000));
    // "2026-01-02T03:04:05.000Z" without the fraction.
    match ms.rsplit_once('.') {
        Some((head, _)) => format!("{head}Z"),
        None => ms,
    }
}

/// Go's crypto/x509 text for a certificate error.
pub fn x509_text(e: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    match e {
        C::UnknownIssuer => "x509: certificate signed by unknown authority".into(),
        C::ExpiredContext { time, not_after } => format!(
            "x509: certificate has expired or is not yet valid: current time {} is after {}",
            go_time(*time),
            go_time(*not_after)
        ),
        C::NotValidYetContext { time, not_before } => format!(
            "x509: certificate has expired or is not yet valid: current time {} is before {}",
            go_time(*time),
            go_time(*not_before)
        ),
        C::Expired | C::NotValidYet => "x509: certificate has expired or is not yet valid".into(),
        C::NotValidForNameContext {
            expected,
            presented,
        } => {
            let expected = match expected {
                ServerName::DnsName(n) => n.as_ref().to_string(),
                ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
                _ => String::new(),
            };
            if presented.is_empty() {
                "x509: certificate is not valid for any names, but wanted to match ".to_string()
                    + &expected
            } else {
                format!(
                    "x509: certificate is valid for {}, not {expected}",
                    presented.join(", ")
                )
            }
        }
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
            "x509: certificate specifies an incompatible key usage".into()
        }
        C::Revoked => "x509: certificate revoked".into(),
        other => format!("x509: {other}"),
    }
}

/// The trusted CA certificates, byte for byte, and the revocation lists.
#[derive(Debug)]
struct Anchors {
    certs: Vec<CertificateDer<'static>>,
    crls: Vec<CertificateRevocationListDer<'static>>,
}

impl Anchors {
    /// Whether `ee` is one of the anchors and usable as a leaf for `purpose`.
    fn admit(&self, ee: &CertificateDer<'_>, now: UnixTime, purpose: Purpose) -> bool {
        self.certs.iter().any(|a| a.as_ref() == ee.as_ref())
            && x509::anchor_usable_as_leaf(ee, now.as_secs(), purpose)
            && !x509::serial(ee).is_some_and(|s| x509::revoked(&s, &self.crls))
    }
}

/// webpki's client-certificate verifier, plus trusted CA certificates used
/// as client certificates.
#[derive(Debug)]
pub struct ClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    anchors: Anchors,
}

impl ClientVerifier {
    pub fn new(
        inner: Arc<dyn ClientCertVerifier>,
        certs: Vec<CertificateDer<'static>>,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Arc<Self> {
        Arc::new(ClientVerifier {
            inner,
            anchors: Anchors { certs, crls },
        })
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            Err(_) if self.anchors.admit(end_entity, now, Purpose::Client) => {
                Ok(ClientCertVerified::assertion())
            }
            r => r.map_err(refused),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// webpki's server-certificate verifier (a member dialling a peer), plus
/// trusted CA certificates used as a peer's own certificate.
#[derive(Debug)]
pub struct ServerVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    anchors: Anchors,
}

impl ServerVerifier {
    pub fn new(
        inner: Arc<dyn ServerCertVerifier>,
        certs: Vec<CertificateDer<'static>>,
    ) -> Arc<Self> {
        Arc::new(ServerVerifier {
            inner,
            anchors: Anchors {
                certs,
                crls: Vec::new(),
            },
        })
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(_)
                if self.anchors.admit(end_entity, now, Purpose::Server)
                    && webpki::EndEntityCert::try_from(end_entity)
                        .is_ok_and(|c| c.verify_is_valid_for_subject_name(server_name).is_ok()) =>
            {
                Ok(ServerCertVerified::assertion())
            }
            r => r.map_err(refused),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
