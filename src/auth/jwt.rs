//! JSON Web Tokens for `--auth-token jwt,...`, as etcd issues and checks them.
//!
//! The option string is etcd's: `jwt,pub-key=<file>,priv-key=<file>,sign-method=<alg>,ttl=<duration>`.
//! A token is `base64url(header).base64url(claims).base64url(signature)` with the
//! header `{"alg":<alg>,"typ":"JWT"}` and the claims `{"exp":<unix seconds>,
//! "revision":<auth revision>,"username":<user>}`, so a token one member (ours or
//! etcd's) signs is valid on every member holding the same key. Tokens are not
//! stored: a member checks the signature and the expiry, and a token signed
//! before the last auth change is refused as old, as etcd does.
//!
//! Keys are PEM files as `openssl` writes them: RSA private keys in PKCS#1 or
//! PKCS#8, EC private keys in SEC1 or PKCS#8, Ed25519 private keys in PKCS#8,
//! public keys as SubjectPublicKeyInfo (`openssl pkey -pubout`); for HS* the
//! private key file's bytes are the shared secret. With only `pub-key` the member
//! verifies tokens but cannot sign them.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::signature::{self as sig, KeyPair};
use ring::{hmac, rand::SystemRandom};
use rustls::pki_types::pem::{PemObject, SectionKind};

/// etcd's default token lifetime when the options name no `ttl`.
const DEFAULT_TTL: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("--auth-token: {0}")]
    Options(String),
    #[error("--auth-token: {file}: {detail}")]
    Key { file: PathBuf, detail: String },
    #[error("--auth-token: the private key {private} and the public key {public} do not match")]
    Mismatch { private: PathBuf, public: PathBuf },
}

/// The signing algorithms (JWS `alg` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    ES512,
    HS256,
    HS384,
    HS512,
    EdDSA,
}

impl Alg {
    pub(crate) const ALL: [Alg; 13] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::ES512,
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
        Alg::EdDSA,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::ES512 => "ES512",
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
            Alg::EdDSA => "EdDSA",
        }
    }

    fn parse(s: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == s)
    }
}

enum Signer {
    Rsa(sig::RsaKeyPair, &'static dyn sig::RsaEncoding),
    Ecdsa(sig::EcdsaKeyPair),
    P521(Box<p521::ecdsa::SigningKey>),
    Ed25519(sig::Ed25519KeyPair),
    Hmac(hmac::Key),
}

enum Verifier {
    /// A ring algorithm and the raw public key it takes.
    Ring(&'static dyn sig::VerificationAlgorithm, Vec<u8>),
    P521(Box<p521::ecdsa::VerifyingKey>),
    Hmac(hmac::Key),
}

/// A token provider configured from `--auth-token jwt,...`.
pub struct Jwt {
    alg: Alg,
    ttl: Duration,
    signer: Option<Signer>,
    verifier: Verifier,
    rng: SystemRandom,
}

impl std::fmt::Debug for Jwt {
    // Never prints key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("alg", &self.alg)
            .field("ttl", &self.ttl)
            .field("can_sign", &self.signer.is_some())
            .finish()
    }
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub username: String,
    pub revision: u64,
}

impl Jwt {
    /// Parses etcd's option string (everything after `jwt,` in `--auth-token`)
    /// and loads the keys.
    pub fn from_options(opts: &str) -> Result<Jwt, JwtError> {
        let (mut public, mut private, mut method, mut ttl) = (None, None, None, None);
        for part in opts.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| JwtError::Options(format!("option {part:?} is not key=value")))?;
            match k {
                "pub-key" => public = Some(PathBuf::from(v)),
                "priv-key" => private = Some(PathBuf::from(v)),
                "sign-method" => method = Some(v.to_string()),
                "ttl" => {
                    ttl = Some(
                        crate::config::values::parse_go_duration(v)
                            .map_err(|e| JwtError::Options(format!("ttl={v}: {e}")))?,
                    )
                }
                other => {
                    return Err(JwtError::Options(format!(
                        "unknown JWT option {other:?} (known: pub-key, priv-key, sign-method, ttl)"
                    )));
                }
            }
        }
        let method =
            method.ok_or_else(|| JwtError::Options("jwt needs sign-method=<alg>".into()))?;
        let alg = Alg::parse(&method).ok_or_else(|| {
            JwtError::Options(format!(
                "unknown sign-method {method:?} (one of {})",
                Alg::ALL.map(Alg::name).join(", ")
            ))
        })?;
        let ttl = ttl.unwrap_or(DEFAULT_TTL);
        if ttl.is_zero() {
            return Err(JwtError::Options("ttl must be positive".into()));
        }
        // The files the algorithm uses, public key first (an HMAC secret is
        // the private key file).
        let read = |file: &Path| std::fs::read(file).map_err(|e| key_err(file, e));
        let hmac = matches!(alg, Alg::HS256 | Alg::HS384 | Alg::HS512);
        let public = match public.as_deref() {
            Some(file) if !hmac => Some((file, read(file)?)),
            _ => None,
        };
        let private = match private.as_deref() {
            Some(file) => Some((file, read(file)?)),
            None => None,
        };
        Self::from_keys(
            alg,
            ttl,
            private.as_ref().map(|(f, d)| (*f, d.as_slice())),
            public.as_ref().map(|(f, d)| (*f, d.as_slice())),
        )
    }

    /// A provider for `alg` from the contents of its key files, each given
    /// with the file's name (for errors).
    pub(crate) fn from_keys(
        alg: Alg,
        ttl: Duration,
        private: Option<(&Path, &[u8])>,
        public: Option<(&Path, &[u8])>,
    ) -> Result<Jwt, JwtError> {
        let rng = SystemRandom::new();
        let (signer, verifier) = load_keys(alg, private, public, &rng)?;
        let jwt = Jwt {
            alg,
            ttl,
            signer,
            verifier,
            rng,
        };
        // A private key can pass its parser and still not sign (an RSA key
        // whose CRT values do not fit its modulus): refuse it here, not at
        // every authentication.
        if let (Some(signer), Some((file, _))) = (&jwt.signer, private) {
            const PROBE: &[u8] = b"etcd-rs key check";
            let signs = jwt
                .sign_bytes(signer, PROBE)
                .is_some_and(|s| jwt.verify_bytes(PROBE, &s));
            if !signs {
                return Err(key_err(
                    file,
                    format!(
                        "the private key cannot make signatures for sign-method={} that its public key verifies",
                        alg.name()
                    ),
                ));
            }
        }
        Ok(jwt)
    }

    pub fn alg(&self) -> Alg {
        self.alg
    }

    pub fn can_sign(&self) -> bool {
        self.signer.is_some()
    }

    /// A token for `username` at auth revision `revision`; None in verify-only mode.
    pub fn sign(&self, username: &str, revision: u64) -> Option<String> {
        let signer = self.signer.as_ref()?;
        let exp = (SystemTime::now() + self.ttl)
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let header = serde_json::json!({"alg": self.alg.name(), "typ": "JWT"});
        // serde_json's maps keep keys sorted, as Go's encoder writes a map.
        let claims = serde_json::json!({"exp": exp, "revision": revision, "username": username});
        let mut out = B64.encode(header.to_string());
        out.push('.');
        out.push_str(&B64.encode(claims.to_string()));
        self.seal(signer, out)
    }

    /// The token made of `signing_input` (`header.claims`) and its signature.
    fn seal(&self, signer: &Signer, mut signing_input: String) -> Option<String> {
        let signature = self.sign_bytes(signer, signing_input.as_bytes())?;
        signing_input.push('.');
        signing_input.push_str(&B64.encode(signature));
        Some(signing_input)
    }

    /// A token of any header and claims (`header.claims`, each base64url),
    /// signed with this provider's key; None in verify-only mode. For the fuzz
    /// targets, which reach what `verify` does after the signature this way.
    pub(crate) fn seal_any(&self, signing_input: &str) -> Option<String> {
        self.seal(self.signer.as_ref()?, signing_input.to_string())
    }

    fn sign_bytes(&self, signer: &Signer, msg: &[u8]) -> Option<Vec<u8>> {
        match signer {
            Signer::Rsa(kp, enc) => {
                let mut out = vec![0; kp.public().modulus_len()];
                kp.sign(*enc, &self.rng, msg, &mut out).ok()?;
                Some(out)
            }
            Signer::Ecdsa(kp) => kp.sign(&self.rng, msg).ok().map(|s| s.as_ref().to_vec()),
            Signer::P521(k) => {
                use p521::ecdsa::signature::Signer as _;
                let s: p521::ecdsa::Signature = k.try_sign(msg).ok()?;
                Some(s.to_bytes().to_vec())
            }
            Signer::Ed25519(kp) => Some(kp.sign(msg).as_ref().to_vec()),
            Signer::Hmac(k) => Some(hmac::sign(k, msg).as_ref().to_vec()),
        }
    }

    /// Whether `signature` is this provider's key's signature of `signed`.
    fn verify_bytes(&self, signed: &[u8], signature: &[u8]) -> bool {
        match &self.verifier {
            Verifier::Ring(alg, key) => sig::UnparsedPublicKey::new(*alg, key)
                .verify(signed, signature)
                .is_ok(),
            Verifier::P521(k) => {
                use p521::ecdsa::signature::Verifier as _;
                p521::ecdsa::Signature::from_slice(signature)
                    .is_ok_and(|s| k.verify(signed, &s).is_ok())
            }
            Verifier::Hmac(k) => hmac::verify(k, signed, signature).is_ok(),
        }
    }

    /// The claims of a token this provider's key signed, if it has not expired.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        let mut parts = token.split('.');
        let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: serde_json::Value = serde_json::from_slice(&B64.decode(h).ok()?).ok()?;
        if header.get("alg")?.as_str()? != self.alg.name() {
            return None;
        }
        let signature = B64.decode(s).ok()?;
        let signed = &token.as_bytes()[..h.len() + 1 + c.len()];
        if !self.verify_bytes(signed, &signature) {
            return None;
        }
        let claims: serde_json::Value = serde_json::from_slice(&B64.decode(c).ok()?).ok()?;
        if let Some(exp) = claims.get("exp") {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
            if now as f64 > exp.as_f64()? {
                return None;
            }
        }
        Some(Claims {
            username: claims.get("username")?.as_str()?.to_string(),
            revision: claims.get("revision")?.as_f64()? as u64,
        })
    }
}

fn key_err(file: &Path, detail: impl ToString) -> JwtError {
    JwtError::Key {
        file: file.to_path_buf(),
        detail: detail.to_string(),
    }
}

/// The PEM sections of a key file's contents.
fn pem_sections(file: &Path, data: &[u8]) -> Result<Vec<(SectionKind, Vec<u8>)>, JwtError> {
    let sections: Vec<(SectionKind, Vec<u8>)> =
        <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(data)
            .collect::<Result<_, _>>()
            .map_err(|e| key_err(file, format!("not a PEM file: {e}")))?;
    if sections.is_empty() {
        return Err(key_err(file, "no PEM key found"));
    }
    Ok(sections)
}

fn private_pem(file: &Path, data: &[u8]) -> Result<(SectionKind, Vec<u8>), JwtError> {
    pem_sections(file, data)?
        .into_iter()
        .find(|(k, _)| {
            matches!(
                k,
                SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey
            )
        })
        .ok_or_else(|| {
            key_err(
                file,
                "no private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY) found",
            )
        })
}

/// The public key of a `PUBLIC KEY` (SubjectPublicKeyInfo) section, or of the
/// first `CERTIFICATE` (etcd takes a certificate there too).
fn public_pem(file: &Path, data: &[u8]) -> Result<keys::PublicKey, JwtError> {
    let sections = pem_sections(file, data)?;
    let spki = if let Some((_, der)) = sections.iter().find(|(k, _)| *k == SectionKind::PublicKey) {
        der.clone()
    } else if let Some((_, der)) = sections
        .iter()
        .find(|(k, _)| *k == SectionKind::Certificate)
    {
        crate::tls::x509::public_key_info(der)
            .ok_or_else(|| key_err(file, "malformed CERTIFICATE"))?
    } else {
        return Err(key_err(
            file,
            "no PUBLIC KEY or CERTIFICATE found (write the key with `openssl pkey -pubout`)",
        ));
    };
    keys::spki(&spki).ok_or_else(|| key_err(file, "malformed PUBLIC KEY"))
}

fn load_keys(
    alg: Alg,
    private: Option<(&Path, &[u8])>,
    public: Option<(&Path, &[u8])>,
    rng: &SystemRandom,
) -> Result<(Option<Signer>, Verifier), JwtError> {
    use Alg::*;
    if matches!(alg, HS256 | HS384 | HS512) {
        let (file, secret) = private.ok_or_else(|| {
            JwtError::Options(format!(
                "{} needs priv-key=<file> (the shared secret)",
                alg.name()
            ))
        })?;
        if secret.is_empty() {
            return Err(key_err(file, "the secret is empty"));
        }
        let h = match alg {
            HS256 => hmac::HMAC_SHA256,
            HS384 => hmac::HMAC_SHA384,
            _ => hmac::HMAC_SHA512,
        };
        let key = hmac::Key::new(h, secret);
        return Ok((Some(Signer::Hmac(key.clone())), Verifier::Hmac(key)));
    }
    if private.is_none() && public.is_none() {
        return Err(JwtError::Options(format!(
            "{} needs priv-key=<file> and/or pub-key=<file>",
            alg.name()
        )));
    }
    // The public key file, checked against the algorithm's key type.
    // The key type the algorithm needs: algorithm OID, EC curve, and its name.
    let (want_oid, want_curve, what) = match alg {
        ES256 => (keys::EC, Some(keys::P256), "an EC P-256 key"),
        ES384 => (keys::EC, Some(keys::P384), "an EC P-384 key"),
        ES512 => (keys::EC, Some(keys::P521), "an EC P-521 key"),
        EdDSA => (keys::ED25519, None, "an Ed25519 key"),
        _ => (keys::RSA, None, "an RSA key"),
    };
    let public_bits = match public {
        Some((file, data)) => {
            let keys::PublicKey { oid, curve, bits } = public_pem(file, data)?;
            if oid != want_oid || (want_curve.is_some() && curve != want_curve) {
                return Err(key_err(
                    file,
                    format!("not {what}, which sign-method={} needs", alg.name()),
                ));
            }
            Some(bits)
        }
        None => None,
    };
    let mismatch = || JwtError::Mismatch {
        private: private.map(|(f, _)| f.to_path_buf()).unwrap_or_default(),
        public: public.map(|(f, _)| f.to_path_buf()).unwrap_or_default(),
    };
    let bad_private = |file: &Path, e: &dyn std::fmt::Display| {
        key_err(
            file,
            format!("not {what} usable for sign-method={}: {e}", alg.name()),
        )
    };
    let mut signer = None;
    let mut own_public: Option<Vec<u8>> = None;
    if let Some((file, data)) = private {
        let (kind, der) = private_pem(file, data)?;
        match alg {
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => {
                let kp = match kind {
                    SectionKind::RsaPrivateKey => sig::RsaKeyPair::from_der(&der),
                    _ => sig::RsaKeyPair::from_pkcs8(&der),
                }
                .map_err(|e| bad_private(file, &e))?;
                let enc: &'static dyn sig::RsaEncoding = match alg {
                    RS256 => &sig::RSA_PKCS1_SHA256,
                    RS384 => &sig::RSA_PKCS1_SHA384,
                    RS512 => &sig::RSA_PKCS1_SHA512,
                    PS256 => &sig::RSA_PSS_SHA256,
                    PS384 => &sig::RSA_PSS_SHA384,
                    _ => &sig::RSA_PSS_SHA512,
                };
                own_public = Some(kp.public().as_ref().to_vec());
                signer = Some(Signer::Rsa(kp, enc));
            }
            ES256 | ES384 => {
                let curve = want_curve.unwrap_or(keys::P256);
                let pkcs8 = match kind {
                    SectionKind::EcPrivateKey => {
                        keys::sec1_to_pkcs8(&der, curve).map_err(|e| bad_private(file, &e))?
                    }
                    _ => der,
                };
                let a = if alg == ES256 {
                    &sig::ECDSA_P256_SHA256_FIXED_SIGNING
                } else {
                    &sig::ECDSA_P384_SHA384_FIXED_SIGNING
                };
                let kp = sig::EcdsaKeyPair::from_pkcs8(a, &pkcs8, rng)
                    .map_err(|e| bad_private(file, &e))?;
                own_public = Some(kp.public_key().as_ref().to_vec());
                signer = Some(Signer::Ecdsa(kp));
            }
            ES512 => {
                let sec1 = match kind {
                    SectionKind::EcPrivateKey => der,
                    _ => {
                        keys::pkcs8_ec_inner(&der, keys::P521).map_err(|e| bad_private(file, &e))?
                    }
                };
                let scalar =
                    keys::sec1_scalar(&sec1, keys::P521).map_err(|e| bad_private(file, &e))?;
                let k = p521::ecdsa::SigningKey::from_slice(&scalar)
                    .map_err(|e| bad_private(file, &e))?;
                own_public = Some(
                    p521::ecdsa::VerifyingKey::from(&k)
                        .to_encoded_point(false)
                        .as_bytes()
                        .to_vec(),
                );
                signer = Some(Signer::P521(Box::new(k)));
            }
            _ => {
                let kp = sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
                    .map_err(|e| bad_private(file, &e))?;
                own_public = Some(kp.public_key().as_ref().to_vec());
                signer = Some(Signer::Ed25519(kp));
            }
        }
    }
    let key = match (public_bits, own_public) {
        (Some(p), Some(o)) if p != o => return Err(mismatch()),
        (Some(p), _) => p,
        (None, Some(o)) => o,
        (None, None) => return Err(mismatch()),
    };
    let verifier = match alg {
        ES512 => Verifier::P521(Box::new(
            p521::ecdsa::VerifyingKey::from_sec1_bytes(&key).map_err(|e| {
                key_err(
                    public.map_or(Path::new(""), |(f, _)| f),
                    format!("bad P-521 point: {e}"),
                )
            })?,
        )),
        _ => {
            let a: &'static dyn sig::VerificationAlgorithm = match alg {
                RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
                RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
                RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
                PS256 => &sig::RSA_PSS_2048_8192_SHA256,
                PS384 => &sig::RSA_PSS_2048_8192_SHA384,
                PS512 => &sig::RSA_PSS_2048_8192_SHA512,
                ES256 => &sig::ECDSA_P256_SHA256_FIXED,
                ES384 => &sig::ECDSA_P384_SHA384_FIXED,
                _ => &sig::ED25519,
            };
            Verifier::Ring(a, key)
        }
    };
    Ok((signer, verifier))
}

/// Keys taken apart with the RustCrypto DER crates: SubjectPublicKeyInfo, SEC1
/// and PKCS#8.
mod keys {
    use const_oid::ObjectIdentifier;
    use der::{Decode, Encode};

    pub const RSA: ObjectIdentifier = const_oid::db::rfc5912::RSA_ENCRYPTION;
    pub const EC: ObjectIdentifier = const_oid::db::rfc5912::ID_EC_PUBLIC_KEY;
    pub const ED25519: ObjectIdentifier = const_oid::db::rfc8410::ID_ED_25519;
    pub const P256: ObjectIdentifier = const_oid::db::rfc5912::SECP_256_R_1;
    pub const P384: ObjectIdentifier = const_oid::db::rfc5912::SECP_384_R_1;
    pub const P521: ObjectIdentifier = const_oid::db::rfc5912::SECP_521_R_1;

    /// A SubjectPublicKeyInfo taken apart.
    pub struct PublicKey {
        /// The algorithm.
        pub oid: ObjectIdentifier,
        /// The named curve of an EC key.
        pub curve: Option<ObjectIdentifier>,
        /// The subjectPublicKey bits.
        pub bits: Vec<u8>,
    }

    pub fn spki(der: &[u8]) -> Option<PublicKey> {
        let k = spki::SubjectPublicKeyInfoRef::from_der(der).ok()?;
        let curve = k
            .algorithm
            .parameters
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
        Some(PublicKey {
            oid: k.algorithm.oid,
            curve,
            bits: k.subject_public_key.as_bytes()?.to_vec(),
        })
    }

    /// The curve a SEC1 key names must be `curve` when it names one.
    fn sec1_checked(
        sec1: &[u8],
        curve: ObjectIdentifier,
    ) -> Result<sec1::EcPrivateKey<'_>, String> {
        let k = sec1::EcPrivateKey::from_der(sec1)
            .map_err(|e| format!("malformed EC private key: {e}"))?;
        match k.parameters.and_then(|p| p.named_curve()) {
            Some(c) if c != curve => Err("a key on another curve".into()),
            _ => Ok(k),
        }
    }

    /// The private scalar of a SEC1 key on `curve`.
    pub fn sec1_scalar(sec1: &[u8], curve: ObjectIdentifier) -> Result<Vec<u8>, String> {
        Ok(sec1_checked(sec1, curve)?.private_key.to_vec())
    }

    /// The SEC1 key inside a PKCS#8 PrivateKeyInfo for an EC key on `curve`.
    pub fn pkcs8_ec_inner(der: &[u8], curve: ObjectIdentifier) -> Result<Vec<u8>, String> {
        let k = pkcs8::PrivateKeyInfo::from_der(der)
            .map_err(|e| format!("malformed PKCS#8 key: {e}"))?;
        let named = k
            .algorithm
            .parameters
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
        if k.algorithm.oid != EC || named != Some(curve) {
            return Err("not an EC key on the expected curve".into());
        }
        Ok(k.private_key.to_vec())
    }

    /// PKCS#8 PrivateKeyInfo around a SEC1 key on `curve` (what `openssl pkcs8
    /// -topk8` writes).
    pub fn sec1_to_pkcs8(sec1: &[u8], curve: ObjectIdentifier) -> Result<Vec<u8>, String> {
        sec1_checked(sec1, curve)?;
        let params = der::asn1::AnyRef::from(&curve);
        pkcs8::PrivateKeyInfo {
            algorithm: spki::AlgorithmIdentifierRef {
                oid: EC,
                parameters: Some(params),
            },
            private_key: sec1,
            public_key: None,
        }
        .to_der()
        .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pem(dir: &Path, name: &str, label: &str, der: &[u8]) -> PathBuf {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let mut text = format!("-----BEGIN {label}-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            text.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            text.push('\n');
        }
        text.push_str(&format!("-----END {label}-----\n"));
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn spki(
        oid: const_oid::ObjectIdentifier,
        curve: const_oid::ObjectIdentifier,
        bits: &[u8],
    ) -> Vec<u8> {
        use der::Encode;
        spki::SubjectPublicKeyInfoRef {
            algorithm: spki::AlgorithmIdentifierRef {
                oid,
                parameters: Some(der::asn1::AnyRef::from(&curve)),
            },
            subject_public_key: der::asn1::BitStringRef::from_bytes(bits).unwrap(),
        }
        .to_der()
        .unwrap()
    }

    #[test]
    fn es256_round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let rng = SystemRandom::new();
        let doc =
            sig::EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let kp = sig::EcdsaKeyPair::from_pkcs8(
            &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
            doc.as_ref(),
            &rng,
        )
        .unwrap();
        let private = write_pem(dir.path(), "k.pem", "PRIVATE KEY", doc.as_ref());
        let public = write_pem(
            dir.path(),
            "p.pem",
            "PUBLIC KEY",
            &spki(keys::EC, keys::P256, kp.public_key().as_ref()),
        );
        let opts = format!(
            "pub-key={},priv-key={},sign-method=ES256,ttl=1m",
            public.display(),
            private.display()
        );
        let j = Jwt::from_options(&opts).unwrap();
        let t = j.sign("alice", 7).unwrap();
        assert_eq!(
            j.verify(&t),
            Some(Claims {
                username: "alice".into(),
                revision: 7
            })
        );
        // A flipped signature byte, another algorithm in the header, garbage.
        let mut bad = t.clone().into_bytes();
        let last = bad.len() - 2;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(j.verify(std::str::from_utf8(&bad).unwrap()), None);
        assert_eq!(j.verify("a.b.c"), None);
        assert_eq!(j.verify(""), None);
        // Verify-only with the public key alone.
        let v =
            Jwt::from_options(&format!("pub-key={},sign-method=ES256", public.display())).unwrap();
        assert!(!v.can_sign());
        assert_eq!(v.sign("alice", 1), None);
        assert_eq!(v.verify(&t).map(|c| c.revision), Some(7));
        // The key does not fit the method.
        let e = Jwt::from_options(&format!("pub-key={},sign-method=ES384", public.display()))
            .unwrap_err();
        assert!(e.to_string().contains("not an EC P-384 key"), "{e}");
        let e = Jwt::from_options(&format!("priv-key={},sign-method=RS256", private.display()))
            .unwrap_err();
        assert!(
            e.to_string().contains("p.pem") || e.to_string().contains("k.pem"),
            "{e}"
        );
        // Another key pair's public key.
        let doc2 =
            sig::EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let private2 = write_pem(dir.path(), "k2.pem", "PRIVATE KEY", doc2.as_ref());
        let e = Jwt::from_options(&format!(
            "pub-key={},priv-key={},sign-method=ES256",
            public.display(),
            private2.display()
        ))
        .unwrap_err();
        assert!(matches!(e, JwtError::Mismatch { .. }), "{e}");
    }

    #[test]
    fn expired_tokens_and_options() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"not so secret").unwrap();
        let j =
            Jwt::from_options(&format!("priv-key={},sign-method=HS256", secret.display())).unwrap();
        let t = j.sign("bob", 3).unwrap();
        assert_eq!(j.verify(&t).map(|c| c.username), Some("bob".to_string()));
        // Same header and signature scheme, but an exp in the past.
        let (h, _) = t.split_once('.').unwrap();
        let claims = B64.encode(r#"{"exp":1000,"revision":3,"username":"bob"}"#);
        let msg = format!("{h}.{claims}");
        let Some(Signer::Hmac(k)) = &j.signer else {
            panic!("hmac signer expected")
        };
        let old = format!("{msg}.{}", B64.encode(hmac::sign(k, msg.as_bytes())));
        assert_eq!(j.verify(&old), None);
        for bad in [
            "sign-method=XX256",
            "priv-key=/nonexistent,sign-method=RS256",
            "pub-key=a,sign-method",
            "color=blue,sign-method=HS256",
            "ttl=5m",
        ] {
            assert!(Jwt::from_options(bad).is_err(), "{bad}");
        }
        let e = Jwt::from_options("priv-key=/nonexistent/k.pem,sign-method=RS256").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/k.pem"), "{e}");
    }

    #[test]
    fn public_key_from_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["jwt".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let private = dir.path().join("k.pem");
        std::fs::write(&private, key.serialize_pem()).unwrap();
        let public = dir.path().join("c.pem");
        std::fs::write(&public, cert.pem()).unwrap();
        let j = Jwt::from_options(&format!(
            "pub-key={},priv-key={},sign-method=ES256",
            public.display(),
            private.display()
        ))
        .unwrap();
        let t = j.sign("alice", 2).unwrap();
        let v =
            Jwt::from_options(&format!("pub-key={},sign-method=ES256", public.display())).unwrap();
        assert_eq!(v.verify(&t).map(|c| c.username), Some("alice".to_string()));
        let e = Jwt::from_options(&format!("pub-key={},sign-method=RS256", public.display()))
            .unwrap_err();
        assert!(e.to_string().contains("not an RSA key"), "{e}");
    }

    #[test]
    fn sec1_wrapping() {
        // A SEC1 key taken from ring's PKCS#8 output, wrapped back.
        let rng = SystemRandom::new();
        let doc =
            sig::EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
        let sec1 = keys::pkcs8_ec_inner(doc.as_ref(), keys::P384).unwrap();
        let again = keys::sec1_to_pkcs8(&sec1, keys::P384).unwrap();
        assert!(
            sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P384_SHA384_FIXED_SIGNING, &again, &rng)
                .is_ok()
        );
        assert!(keys::sec1_scalar(&sec1, keys::P384).is_ok_and(|s| s.len() == 48));
        // With its curve named, as openssl writes SEC1 keys: another curve is refused.
        let mut named = {
            use der::Decode;
            sec1::EcPrivateKey::from_der(&sec1).unwrap()
        };
        named.parameters = Some(sec1::EcParameters::NamedCurve(keys::P384));
        let named = der::Encode::to_der(&named).unwrap();
        assert!(keys::sec1_scalar(&named, keys::P384).is_ok());
        assert!(keys::sec1_scalar(&named, keys::P256).is_err());
        assert!(keys::sec1_to_pkcs8(&named, keys::P256).is_err());
        assert!(keys::pkcs8_ec_inner(doc.as_ref(), keys::P256).is_err());
        assert!(keys::sec1_to_pkcs8(b"junk", keys::P384).is_err());
    }

    /// Found by fuzzing: an RSA key whose CRT exponent (dmq1) does not fit
    /// loaded, and then every sign failed. Such a key is refused on load.
    #[test]
    fn a_private_key_that_cannot_sign_is_refused() {
        let pem = include_bytes!("../../fuzz/regressions/jwt_keys/rs256-bad-crt-exponent.pem");
        let file = Path::new("bad.pem");
        for alg in [Alg::RS256, Alg::PS512] {
            let e = Jwt::from_keys(alg, DEFAULT_TTL, Some((file, pem.as_slice())), None)
                .expect_err("a key that cannot sign");
            assert!(
                matches!(&e, JwtError::Key { file: f, detail } if f == file && detail.contains("cannot make signatures")),
                "{e}"
            );
        }
    }
}
