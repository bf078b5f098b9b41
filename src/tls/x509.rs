//! What the member reads out of an X.509 certificate, with a real parser
//! (`x509-cert`), never by searching its bytes: the subject's common name as
//! Go's crypto/x509 reads it (the user of a client certificate, and what
//! `--peer-cert-allowed-cn` matches), the validity period and extended key
//! usages (for a certificate that is itself a trust anchor), and the public key
//! (a JWT `pub-key` given as a certificate).

use const_oid::ObjectIdentifier;
use const_oid::db::rfc4519::CN;
use const_oid::db::rfc5280::{ANY_EXTENDED_KEY_USAGE, ID_CE_EXT_KEY_USAGE};
use der::{Decode, Encode, Tag};
use x509_cert::Certificate;

/// What a certificate is presented for: `clientAuth` or `serverAuth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Client,
    Server,
}

impl Purpose {
    fn oid(self) -> ObjectIdentifier {
        match self {
            Purpose::Client => const_oid::db::rfc5280::ID_KP_CLIENT_AUTH,
            Purpose::Server => const_oid::db::rfc5280::ID_KP_SERVER_AUTH,
        }
    }
}

/// The subject's common name of a DER certificate, as Go's crypto/x509 reads
/// it: every attribute of every relative distinguished name of the subject in
/// order, the last `CN` winning. Only the subject counts: a `CN` inside a
/// subject alternative name, the issuer or any extension never does. None when
/// the certificate does not parse, the subject has no `CN`, or one of its
/// attribute values is not a string type Go accepts (Go then refuses the whole
/// certificate).
///
/// The attributes of one multi-valued RDN are taken in DER order (the order
/// `x509-cert` keeps a SET OF in); a certificate encoded as DER requires, and as
/// every CA writes them.
pub fn subject_common_name(cert: &[u8]) -> Option<String> {
    let cert = Certificate::from_der(cert).ok()?;
    let mut cn = None;
    for rdn in cert.tbs_certificate.subject.0.iter() {
        for atv in rdn.0.iter() {
            let value = attribute_string(der::Tagged::tag(&atv.value), atv.value.value())?;
            if atv.oid == CN {
                cn = Some(value);
            }
        }
    }
    cn
}

/// An attribute value of a distinguished name as a string, for the string
/// types Go's parser takes; None for any other type or invalid contents.
fn attribute_string(tag: Tag, bytes: &[u8]) -> Option<String> {
    match tag {
        Tag::Utf8String => std::str::from_utf8(bytes).ok().map(str::to_owned),
        // Go takes a T61String's bytes as they are.
        Tag::TeletexString => std::str::from_utf8(bytes).ok().map(str::to_owned),
        Tag::PrintableString => bytes
            .iter()
            .all(|&b| printable(b))
            .then(|| String::from_utf8_lossy(bytes).into_owned()),
        Tag::Ia5String => bytes
            .is_ascii()
            .then(|| String::from_utf8_lossy(bytes).into_owned()),
        Tag::NumericString => bytes
            .iter()
            .all(|&b| b.is_ascii_digit() || b == b' ')
            .then(|| String::from_utf8_lossy(bytes).into_owned()),
        Tag::BmpString => {
            if !bytes.len().is_multiple_of(2) {
                return None;
            }
            let units = bytes
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        _ => None,
    }
}

/// PrintableString's alphabet, with the `*` and `&` Go also accepts there.
fn printable(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b" '()+,-./:=?*&".contains(&b)
}

/// Whether a certificate that is itself a trusted CA certificate may be used
/// as a leaf at `now` (seconds since the epoch) for `purpose`, as Go accepts
/// it: within its validity period, and with an extended key usage that allows
/// the purpose when it has one.
pub fn anchor_usable_as_leaf(cert: &[u8], now: u64, purpose: Purpose) -> bool {
    let Ok(cert) = Certificate::from_der(cert) else {
        return false;
    };
    let tbs = &cert.tbs_certificate;
    let secs = |t: &x509_cert::time::Time| t.to_unix_duration().as_secs();
    if now < secs(&tbs.validity.not_before) || now > secs(&tbs.validity.not_after) {
        return false;
    }
    let Some(ext) = tbs
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == ID_CE_EXT_KEY_USAGE)
    else {
        return true;
    };
    match x509_cert::ext::pkix::ExtendedKeyUsage::from_der(ext.extn_value.as_bytes()) {
        Ok(eku) => eku
            .0
            .iter()
            .any(|u| *u == purpose.oid() || *u == ANY_EXTENDED_KEY_USAGE),
        Err(_) => false,
    }
}

/// The DER SubjectPublicKeyInfo of a DER certificate.
pub fn public_key_info(cert: &[u8]) -> Option<Vec<u8>> {
    Certificate::from_der(cert)
        .ok()?
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .ok()
}

/// The serial number's bytes, as a CRL names it.
pub fn serial(cert: &[u8]) -> Option<Vec<u8>> {
    Certificate::from_der(cert)
        .ok()
        .map(|c| c.tbs_certificate.serial_number.as_bytes().to_vec())
}

/// Whether one of the certificate revocation lists (DER) names this serial.
/// A list that does not parse revokes nothing here: loading it already refused
/// a malformed file.
pub fn revoked(serial: &[u8], crls: &[impl AsRef<[u8]>]) -> bool {
    crls.iter().any(|crl| {
        x509_cert::crl::CertificateList::from_der(crl.as_ref()).is_ok_and(|l| {
            l.tbs_cert_list
                .revoked_certificates
                .iter()
                .flatten()
                .any(|r| r.serial_number.as_bytes() == serial)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_types_as_go_reads_them() {
        assert_eq!(
            attribute_string(Tag::PrintableString, b"*.example"),
            Some("*.example".into())
        );
        assert_eq!(attribute_string(Tag::PrintableString, b"a_b"), None);
        assert_eq!(attribute_string(Tag::Ia5String, &[0x80]), None);
        assert_eq!(
            attribute_string(Tag::BmpString, &[0, b'r', 0, b'o']),
            Some("ro".into())
        );
        assert_eq!(attribute_string(Tag::BmpString, &[0, b'r', 0]), None);
        assert_eq!(
            attribute_string(Tag::NumericString, b"12 3"),
            Some("12 3".into())
        );
        assert_eq!(attribute_string(Tag::NumericString, b"12a"), None);
        assert_eq!(attribute_string(Tag::OctetString, b"root"), None);
        assert_eq!(attribute_string(Tag::Utf8String, &[0xff]), None);
    }

    #[test]
    fn common_name_of_the_subject_only() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(vec!["root".to_string()]).expect("params");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "root");
        let cert = p.self_signed(&key).expect("cert");
        assert_eq!(subject_common_name(cert.der()).as_deref(), Some("alice"));
        assert_eq!(subject_common_name(b"garbage"), None);
        assert!(public_key_info(cert.der()).is_some());
    }

    #[test]
    fn anchors_as_leaves_within_dates_and_usages() {
        let key = rcgen::KeyPair::generate().expect("key");
        let make = |from: i32, to: i32, eku: Vec<rcgen::ExtendedKeyUsagePurpose>| {
            let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("p");
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.not_before = rcgen::date_time_ymd(from, 1, 1);
            p.not_after = rcgen::date_time_ymd(to, 1, 1);
            p.extended_key_usages = eku;
            p.self_signed(&key).expect("cert").der().to_vec()
        };
        // 2026-12-01 in seconds.
        let now = 1_796_083_200;
        use rcgen::ExtendedKeyUsagePurpose as E;
        let any = make(2024, 2099, vec![]);
        assert!(anchor_usable_as_leaf(&any, now, Purpose::Client));
        assert!(anchor_usable_as_leaf(&any, now, Purpose::Server));
        let expired = make(2019, 2020, vec![]);
        assert!(!anchor_usable_as_leaf(&expired, now, Purpose::Client));
        let future = make(2090, 2099, vec![]);
        assert!(!anchor_usable_as_leaf(&future, now, Purpose::Client));
        let server_only = make(2024, 2099, vec![E::ServerAuth]);
        assert!(anchor_usable_as_leaf(&server_only, now, Purpose::Server));
        assert!(!anchor_usable_as_leaf(&server_only, now, Purpose::Client));
        let any_usage = make(2024, 2099, vec![E::Any]);
        assert!(anchor_usable_as_leaf(&any_usage, now, Purpose::Client));
        assert!(!anchor_usable_as_leaf(b"junk", now, Purpose::Client));
        assert!(serial(&any).is_some());
        assert!(!revoked(
            &serial(&any).unwrap_or_default(),
            &[b"junk".as_slice()]
        ));
    }
}
