//! `--auth-token jwt,...`: tokens signed with keys `openssl` made, side by side
//! with Debian's etcd holding the same keys. A token either server signs works on
//! the other; expiry, old auth revisions and bad options behave as etcd's.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use etcd_rs::pb::etcdserverpb::auth_client::AuthClient;
use etcd_rs::pb::etcdserverpb::kv_client::KvClient;
use etcd_rs::pb::etcdserverpb::{AuthenticateRequest, RangeRequest};
use tonic::transport::Channel;

use crate::harness::{Server, run_alone_to_exit};
use crate::security::{setup_users, sh_err, sh_ok};

fn openssl(args: &[&str]) {
    crate::harness::openssl_in(Path::new("."), args);
}

/// A private key of `kind` as an operator makes it, and its public key.
fn keypair(dir: &Path, kind: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{kind}.key"));
    let k = key.to_str().expect("utf-8 path");
    match kind {
        // PKCS#1 ("RSA PRIVATE KEY").
        "rsa" => openssl(&["genrsa", "-traditional", "-out", k, "2048"]),
        // PKCS#8 ("PRIVATE KEY").
        "rsa-pkcs8" => openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            k,
        ]),
        // SEC1 ("EC PRIVATE KEY").
        "p256" => openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            k,
        ]),
        "p521" => openssl(&[
            "ecparam",
            "-name",
            "secp521r1",
            "-genkey",
            "-noout",
            "-out",
            k,
        ]),
        other => panic!("unknown key kind {other}"),
    }
    let public = dir.join(format!("{kind}.pub"));
    openssl(&[
        "pkey",
        "-in",
        k,
        "-pubout",
        "-out",
        public.to_str().expect("utf-8 path"),
    ]);
    (key, public)
}

fn jwt_flag(private: Option<&Path>, public: Option<&Path>, method: &str, ttl: &str) -> String {
    let mut s = "jwt".to_string();
    if let Some(p) = public {
        s.push_str(&format!(",pub-key={}", p.display()));
    }
    if let Some(p) = private {
        s.push_str(&format!(",priv-key={}", p.display()));
    }
    s.push_str(&format!(",sign-method={method},ttl={ttl}"));
    s
}

async fn channel(srv: &Server) -> Channel {
    tonic::transport::Endpoint::from_shared(srv.endpoint())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

async fn token(srv: &Server, user: &str, password: &str) -> Result<String, tonic::Status> {
    AuthClient::new(channel(srv).await)
        .authenticate(AuthenticateRequest {
            name: user.into(),
            password: password.into(),
        })
        .await
        .map(|r| r.into_inner().token)
}

/// A Range with `token` in the metadata: Ok(count) or the status message.
async fn range_with(srv: &Server, token: &str, key: &str) -> Result<i64, String> {
    let mut req = tonic::Request::new(RangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("token", token.parse().expect("ascii token"));
    KvClient::new(channel(srv).await)
        .range(req)
        .await
        .map(|r| r.into_inner().count)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

fn decode_part(token: &str, i: usize) -> serde_json::Value {
    let part = token.split('.').nth(i).expect("three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("json")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn jwt_tokens_work_across_ours_and_etcd() {
    let keys = tempfile::tempdir().expect("temp dir");
    let cases = [
        ("RS256", "rsa"),
        ("PS384", "rsa-pkcs8"),
        ("ES256", "p256"),
        ("ES512", "p521"),
    ];
    for (i, (method, kind)) in cases.into_iter().enumerate() {
        let (private, public) = keypair(keys.path(), kind);
        let flag = jwt_flag(Some(&private), Some(&public), method, "5m");
        let ours = Server::start(&["--auth-token", &flag]);
        let reference = Server::start_reference(&["--auth-token", &flag]);
        setup_users(&ours);
        setup_users(&reference);
        rt().block_on(async {
            let to = token(&ours, "alice", "pw").await.expect("token from ours");
            let tr = token(&reference, "alice", "pw")
                .await
                .expect("token from etcd");
            // The same shape as etcd's: header and claims.
            for t in [&to, &tr] {
                assert_eq!(t.split('.').count(), 3, "{t}");
                assert_eq!(decode_part(t, 0)["alg"], method, "{method}");
                assert_eq!(decode_part(t, 1)["username"], "alice");
            }
            assert_eq!(
                decode_part(&to, 1)["revision"],
                decode_part(&tr, 1)["revision"],
                "auth revisions after the same steps"
            );
            // Each server accepts the other's token.
            assert_eq!(range_with(&ours, &tr, "/app/x").await, Ok(0), "{method}");
            assert_eq!(range_with(&reference, &to, "/app/x").await, Ok(0));
            // Permissions still apply, with the same error.
            let eo = range_with(&ours, &tr, "/other").await;
            let er = range_with(&reference, &to, "/other").await;
            assert_eq!(
                eo,
                Err("PermissionDenied: etcdserver: permission denied".into())
            );
            assert_eq!(eo, er);
            // A token with a flipped signature, or signed by another key.
            let mut forged = to.clone();
            forged.truncate(forged.len() - 4);
            forged.push_str(if to.ends_with("AAAA") { "BBBB" } else { "AAAA" });
            let eo = range_with(&ours, &forged, "/app/x").await;
            assert_eq!(
                eo,
                Err("Unauthenticated: etcdserver: invalid auth token".into())
            );
            assert_eq!(eo, range_with(&reference, &forged, "/app/x").await);
            // Wrong password: the same error as etcd's.
            let eo = token(&ours, "alice", "nope")
                .await
                .expect_err("bad password");
            let er = token(&reference, "alice", "nope")
                .await
                .expect_err("bad password");
            assert_eq!((eo.code(), eo.message()), (er.code(), er.message()));

            if i == 0 {
                // etcdctl logs in with the JWT provider like with simple tokens.
                assert_eq!(
                    sh_ok(&ours, Some("alice:pw"), &["put", "/app/x", "1"]).trim(),
                    "OK"
                );
                assert_eq!(
                    sh_ok(&ours, Some("alice:pw"), &["get", "/app/x"]),
                    "/app/x\n1\n"
                );
                assert_eq!(
                    sh_err(&ours, Some("alice:pw"), &["put", "/other", "1"]),
                    "Error: etcdserver: permission denied"
                );
                // An auth change makes earlier tokens old on both servers.
                for srv in [&ours, &reference] {
                    sh_ok(srv, Some("root:pw"), &["role", "add", "extra"]);
                }
                let eo = range_with(&ours, &to, "/app/x").await;
                assert_eq!(
                    eo,
                    Err("InvalidArgument: etcdserver: revision of auth store is old".into())
                );
                assert_eq!(eo, range_with(&reference, &tr, "/app/x").await);
                // etcd-client authenticates again on that error.
                let fresh = token(&ours, "alice", "pw").await.expect("new token");
                assert_eq!(range_with(&ours, &fresh, "/app/x").await, Ok(1));
            }
        });
        let log = ours.log();
        assert!(!log.contains(&to_secret_marker(&private)), "key in log");
    }
}

/// A line of the private key's base64 body, which must never reach a log.
fn to_secret_marker(private: &Path) -> String {
    std::fs::read_to_string(private)
        .expect("key")
        .lines()
        .nth(2)
        .unwrap_or_default()
        .to_string()
}

#[test]
fn jwt_expiry_verify_only_and_bad_options() {
    let keys = tempfile::tempdir().expect("temp dir");
    let (private, public) = keypair(keys.path(), "p256");
    let flag = jwt_flag(Some(&private), Some(&public), "ES256", "1s");
    let ours = Server::start(&["--auth-token", &flag]);
    let reference = Server::start_reference(&["--auth-token", &flag]);
    setup_users(&ours);
    setup_users(&reference);
    // A second member holding only the public key verifies tokens but cannot
    // sign them (etcd's verify-only mode).
    let verify_only = Server::start(&[
        "--auth-token",
        &jwt_flag(None, Some(&public), "ES256", "1s"),
    ]);
    setup_users(&verify_only);
    rt().block_on(async {
        for srv in [&ours, &reference] {
            // Taken before asking: the token cannot be signed earlier.
            let issued = Instant::now();
            let t = token(srv, "alice", "pw").await.expect("token");
            assert_eq!(range_with(srv, &t, "/app/x").await, Ok(0));
            // exp is in whole seconds: the token stops working within ~2 s.
            let mut last = Ok(0);
            while issued.elapsed() < Duration::from_secs(5) {
                last = range_with(srv, &t, "/app/x").await;
                if last.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(
                last,
                Err("Unauthenticated: etcdserver: invalid auth token".into()),
                "{:?} after {:?}",
                srv.kind,
                issued.elapsed()
            );
            assert!(issued.elapsed() >= Duration::from_millis(900));
        }
        let t = token(&ours, "alice", "pw").await.expect("token");
        assert_eq!(range_with(&verify_only, &t, "/app/x").await, Ok(0));
        let e = token(&verify_only, "alice", "pw")
            .await
            .expect_err("verify-only member signed a token");
        assert_eq!(
            e.message(),
            "auth: token signing attempted with verify-only key"
        );
    });

    // Bad options stop the server with the flag, file or key named.
    let dir = tempfile::tempdir().expect("temp dir");
    let (rsa, rsa_pub) = keypair(keys.path(), "rsa");
    let missing = keys.path().join("missing.key");
    let other = keys.path().join("other");
    std::fs::create_dir_all(&other).expect("dir");
    let (other, _) = keypair(&other, "p256");
    for (n, (flag, expect)) in [
        (
            jwt_flag(Some(&missing), None, "RS256", "5m"),
            missing.display().to_string(),
        ),
        (
            jwt_flag(Some(&rsa), Some(&public), "RS256", "5m"),
            format!("{}: not an RSA key", public.display()),
        ),
        (
            jwt_flag(Some(&private), Some(&rsa_pub), "ES256", "5m"),
            format!("{}: not an EC P-256 key", rsa_pub.display()),
        ),
        (
            jwt_flag(Some(&rsa), Some(&rsa_pub), "XS256", "5m"),
            "unknown sign-method \"XS256\"".into(),
        ),
        (
            format!(
                "jwt,priv-key={},sign-method=RS256,colour=red",
                rsa.display()
            ),
            "unknown JWT option \"colour\"".into(),
        ),
        ("bearer".into(), "unknown token type \"bearer\"".into()),
        (
            jwt_flag(Some(&other), Some(&public), "ES256", "5m"),
            "do not match".into(),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let out = run_to_exit_with(&dir.path().join(format!("d{n}")), &flag);
        // The log line is JSON: compare without its escapes.
        let err = String::from_utf8_lossy(&out.stderr).replace('\\', "");
        assert!(!out.status.success(), "{flag}: started");
        assert!(err.contains(&expect), "{flag}: {err}");
        assert!(!err.contains("panicked"), "{flag}: {err}");
    }
}

/// Runs our server with `--auth-token <flag>` until it exits (or 20 s pass).
fn run_to_exit_with(dir: &Path, flag: &str) -> std::process::Output {
    std::fs::create_dir_all(dir).expect("dir");
    run_alone_to_exit(
        &dir.join("data"),
        "http",
        &["--auth-token".to_string(), flag.to_string()],
        dir,
    )
}
