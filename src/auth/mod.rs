//! Authentication and authorization as etcd defines them: users with bcrypt
//! password hashes (or none, for certificate-only users), roles with key-range
//! permissions, the `root` user and role, simple tokens, and the checks every RPC
//! makes once auth is enabled.
//!
//! The store changes only in the apply loop (every change is a Raft entry, with the
//! password already hashed by the member that received it); simple tokens are
//! assigned through the log too, so every member knows them.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use prost::Message;

pub mod jwt;

use crate::error::{Error, Result};
use crate::pb::authpb::{Permission, Role, User, UserAddOptions, permission};

pub const ROOT: &str = "root";

#[derive(Debug, Default, Clone)]
pub struct State {
    pub enabled: bool,
    pub revision: u64,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
}

#[derive(Debug)]
struct Token {
    user: String,
    expires: Instant,
}

#[derive(Debug)]
pub struct AuthStore {
    state: RwLock<State>,
    tokens: RwLock<HashMap<String, Token>>,
    /// When expired simple tokens are next dropped.
    next_sweep: parking_lot::Mutex<Instant>,
    ttl: Duration,
    /// Set with `--auth-token jwt,...`: tokens are signed JWTs, not stored.
    jwt: Option<jwt::Jwt>,
    pub bcrypt_cost: u32,
}

/// Who is making a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Auth is disabled: everything is allowed.
    Anyone,
    User(String),
}

fn covers(perms: &[(Vec<u8>, Vec<u8>)], key: &[u8], end: &[u8]) -> bool {
    // Normalise to half-open intervals [start, stop) with None = unbounded.
    fn interval(key: &[u8], end: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
        if end.is_empty() {
            let mut stop = key.to_vec();
            stop.push(0);
            (key.to_vec(), Some(stop))
        } else if end == [0] {
            (key.to_vec(), None)
        } else {
            (key.to_vec(), Some(end.to_vec()))
        }
    }
    let (mut at, stop) = interval(key, end);
    let mut ivs: Vec<(Vec<u8>, Option<Vec<u8>>)> =
        perms.iter().map(|(k, e)| interval(k, e)).collect();
    ivs.sort();
    loop {
        if let Some(s) = &stop
            && at >= *s
        {
            return true;
        }
        // Find an interval containing `at` that reaches furthest.
        let mut best: Option<Option<Vec<u8>>> = None;
        for (s, e) in &ivs {
            if *s <= at && e.as_ref().is_none_or(|e| *e > at) {
                best = match (best, e) {
                    (None, e) => Some(e.clone()),
                    (Some(None), _) => Some(None),
                    (Some(Some(_)), None) => Some(None),
                    (Some(Some(b)), Some(e)) => Some(Some(if *e > b { e.clone() } else { b })),
                };
            }
        }
        match best {
            None => return false,
            Some(None) => return true,
            Some(Some(e)) => at = e,
        }
    }
}

impl AuthStore {
    pub fn new(token_ttl: Duration, bcrypt_cost: u32) -> Self {
        Self::with_jwt(token_ttl, bcrypt_cost, None)
    }

    pub fn with_jwt(token_ttl: Duration, bcrypt_cost: u32, jwt: Option<jwt::Jwt>) -> Self {
        AuthStore {
            state: RwLock::new(State {
                revision: 1,
                ..Default::default()
            }),
            tokens: RwLock::new(HashMap::new()),
            next_sweep: parking_lot::Mutex::new(Instant::now()),
            ttl: token_ttl,
            jwt,
            bcrypt_cost,
        }
    }

    pub fn snapshot(&self) -> State {
        self.state.read().clone()
    }

    pub fn replace(&self, st: State) {
        *self.state.write() = st;
        self.tokens.write().clear();
    }

    pub fn enabled(&self) -> bool {
        self.state.read().enabled
    }

    pub fn revision(&self) -> u64 {
        self.state.read().revision
    }

    /// Resolves the caller from a token or a client certificate's common name.
    pub fn caller(&self, token: Option<&str>, cert_cn: Option<&str>) -> Result<Caller> {
        if !self.enabled() {
            return Ok(Caller::Anyone);
        }
        if let Some(t) = token {
            if let Some(jwt) = &self.jwt {
                let claims = jwt.verify(t).ok_or(Error::InvalidAuthToken)?;
                // A token from before the last auth change: clients
                // authenticate again on this error.
                if claims.revision < self.revision() {
                    return Err(Error::AuthOldRevision);
                }
                return Ok(Caller::User(claims.username));
            }
            let mut tokens = self.tokens.write();
            let now = Instant::now();
            return match tokens.get_mut(t) {
                Some(tok) if tok.expires > now => {
                    tok.expires = now + self.ttl;
                    Ok(Caller::User(tok.user.clone()))
                }
                Some(_) => {
                    tokens.remove(t);
                    Err(Error::InvalidAuthToken)
                }
                None => Err(Error::InvalidAuthToken),
            };
        }
        match cert_cn {
            Some(cn) if !cn.is_empty() => Ok(Caller::User(cn.to_string())),
            _ => Ok(Caller::User(String::new())),
        }
    }

    fn is_root(st: &State, user: &str) -> bool {
        st.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == ROOT))
    }

    /// Admin operations: only users with the root role.
    pub fn check_admin(&self, c: &Caller) -> Result<()> {
        match c {
            Caller::Anyone => Ok(()),
            Caller::User(u) if u.is_empty() => Err(Error::UserEmpty),
            Caller::User(u) => {
                let st = self.state.read();
                if !st.enabled || Self::is_root(&st, u) {
                    Ok(())
                } else if !st.users.contains_key(u) {
                    // etcd's IsAdminPermitted: an unknown user is not found,
                    // where a key check says permission denied.
                    Err(Error::UserNotFound)
                } else {
                    Err(Error::PermissionDenied)
                }
            }
        }
    }

    /// Checks `perm` (read or write) on the key range for the caller.
    pub fn check(&self, c: &Caller, write: bool, key: &[u8], end: &[u8]) -> Result<()> {
        let u = match c {
            Caller::Anyone => return Ok(()),
            Caller::User(u) if u.is_empty() => return Err(Error::UserEmpty),
            Caller::User(u) => u,
        };
        let st = self.state.read();
        if !st.enabled {
            return Ok(());
        }
        let Some(user) = st.users.get(u) else {
            return Err(Error::PermissionDenied);
        };
        if user.roles.iter().any(|r| r == ROOT) {
            return Ok(());
        }
        let mut ivs = Vec::new();
        for r in &user.roles {
            if let Some(role) = st.roles.get(r) {
                for p in &role.key_permission {
                    let t =
                        permission::Type::try_from(p.perm_type).unwrap_or(permission::Type::Read);
                    let ok = match t {
                        permission::Type::Readwrite => true,
                        permission::Type::Write => write,
                        permission::Type::Read => !write,
                    };
                    if ok {
                        ivs.push((p.key.clone(), p.range_end.clone()));
                    }
                }
            }
        }
        if covers(&ivs, key, end) {
            Ok(())
        } else {
            Err(Error::PermissionDenied)
        }
    }

    /// Verifies a password (API side, before proposing the token).
    pub fn check_password(&self, name: &str, password: &str) -> Result<()> {
        let st = self.state.read();
        if !st.enabled {
            return Err(Error::AuthNotEnabled);
        }
        let user = st.users.get(name).ok_or(Error::AuthFailed)?;
        if user.options.as_ref().is_some_and(|o| o.no_password) {
            return Err(Error::AuthFailed);
        }
        let hash = String::from_utf8_lossy(&user.password).to_string();
        drop(st);
        match bcrypt::verify(password, &hash) {
            Ok(true) => Ok(()),
            _ => Err(Error::AuthFailed),
        }
    }

    pub fn hash_password(&self, password: &str) -> Result<String> {
        bcrypt::hash(password, self.bcrypt_cost)
            .map_err(|e| Error::InvalidArgument(format!("etcdserver: cannot hash password: {e}")))
    }

    /// The JWT provider, when tokens are JWTs.
    pub fn jwt(&self) -> Option<&jwt::Jwt> {
        self.jwt.as_ref()
    }

    /// Records a token assigned through the log.
    pub fn assign_token(&self, token: &str, user: &str) {
        self.assign_token_at(token, user, Instant::now());
    }

    /// [`Self::assign_token`] at `now`; tokens that expired unused are dropped
    /// here (at most once a second), so tokens nobody uses again do not pile up.
    fn assign_token_at(&self, token: &str, user: &str, now: Instant) {
        let mut tokens = self.tokens.write();
        let mut next_sweep = self.next_sweep.lock();
        if now >= *next_sweep {
            tokens.retain(|_, t| t.expires > now);
            *next_sweep = now + Duration::from_secs(1);
        }
        tokens.insert(
            token.to_string(),
            Token {
                user: user.to_string(),
                expires: now + self.ttl,
            },
        );
    }

    /// Applies one management request (apply loop). Returns the new state to persist.
    pub fn apply(&self, req: &AuthOp) -> Result<State> {
        let mut st = self.state.write();
        let mut next = st.clone();
        // etcd keeps the auth revision on enable and on a grant of a role the
        // user already has; every other change moves it.
        let mut bump = true;
        match req {
            AuthOp::Enable => {
                if next.enabled {
                    return Ok(next);
                }
                let root = next.users.get(ROOT).ok_or(Error::RootUserNotExist)?;
                if !root.roles.iter().any(|r| r == ROOT) {
                    return Err(Error::RootRoleNotExist);
                }
                next.enabled = true;
                bump = false;
            }
            AuthOp::Disable => next.enabled = false,
            AuthOp::UserAdd {
                name,
                hash,
                no_password,
            } => {
                if name.is_empty() {
                    return Err(Error::UserEmpty);
                }
                if next.users.contains_key(name) {
                    return Err(Error::UserAlreadyExist);
                }
                next.users.insert(
                    name.clone(),
                    User {
                        name: name.clone().into_bytes(),
                        password: hash.clone().into_bytes(),
                        roles: vec![],
                        options: Some(UserAddOptions {
                            no_password: *no_password,
                        }),
                    },
                );
            }
            AuthOp::UserDelete { name } => {
                if next.enabled && name == ROOT {
                    return Err(Error::InvalidAuthMgmt);
                }
                next.users.remove(name).ok_or(Error::UserNotFound)?;
                self.tokens.write().retain(|_, t| &t.user != name);
            }
            AuthOp::UserChangePassword { name, hash } => {
                let u = next.users.get_mut(name).ok_or(Error::UserNotFound)?;
                u.password = hash.clone().into_bytes();
                self.tokens.write().retain(|_, t| &t.user != name);
            }
            AuthOp::UserGrantRole { user, role } => {
                if role != ROOT && !next.roles.contains_key(role) {
                    return Err(Error::RoleNotFound);
                }
                let u = next.users.get_mut(user).ok_or(Error::UserNotFound)?;
                if u.roles.contains(role) {
                    bump = false;
                } else {
                    u.roles.push(role.clone());
                    u.roles.sort();
                }
            }
            AuthOp::UserRevokeRole { name, role } => {
                if next.enabled && name == ROOT && role == ROOT {
                    return Err(Error::InvalidAuthMgmt);
                }
                let u = next.users.get_mut(name).ok_or(Error::UserNotFound)?;
                let before = u.roles.len();
                u.roles.retain(|r| r != role);
                if u.roles.len() == before {
                    return Err(Error::RoleNotGranted);
                }
            }
            AuthOp::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(Error::RoleEmpty);
                }
                if next.roles.contains_key(name) {
                    return Err(Error::RoleAlreadyExist);
                }
                next.roles.insert(
                    name.clone(),
                    Role {
                        name: name.clone().into_bytes(),
                        key_permission: vec![],
                    },
                );
            }
            AuthOp::RoleDelete { name } => {
                if next.enabled && name == ROOT {
                    return Err(Error::InvalidAuthMgmt);
                }
                next.roles.remove(name).ok_or(Error::RoleNotFound)?;
                for u in next.users.values_mut() {
                    u.roles.retain(|r| r != name);
                }
            }
            AuthOp::RoleGrantPermission { name, perm } => {
                let r = next.roles.get_mut(name).ok_or(Error::RoleNotFound)?;
                match r
                    .key_permission
                    .iter_mut()
                    .find(|p| p.key == perm.key && p.range_end == perm.range_end)
                {
                    Some(p) => p.perm_type = perm.perm_type,
                    None => {
                        r.key_permission.push(perm.clone());
                        r.key_permission
                            .sort_by(|a, b| (&a.key, &a.range_end).cmp(&(&b.key, &b.range_end)));
                    }
                }
            }
            AuthOp::RoleRevokePermission {
                name,
                key,
                range_end,
            } => {
                let r = next.roles.get_mut(name).ok_or(Error::RoleNotFound)?;
                let before = r.key_permission.len();
                r.key_permission
                    .retain(|p| !(p.key == *key && p.range_end == *range_end));
                if r.key_permission.len() == before {
                    return Err(Error::PermissionNotGranted);
                }
            }
        }
        if bump {
            next.revision += 1;
        }
        *st = next.clone();
        Ok(next)
    }

    /// Users and roles in their stored form.
    pub fn encode(st: &State) -> (Rows, Rows) {
        (
            st.users
                .iter()
                .map(|(k, v)| (k.clone(), v.encode_to_vec()))
                .collect(),
            st.roles
                .iter()
                .map(|(k, v)| (k.clone(), v.encode_to_vec()))
                .collect(),
        )
    }

    pub fn role_names(&self) -> Vec<String> {
        self.state.read().roles.keys().cloned().collect()
    }

    pub fn user_names(&self) -> Vec<String> {
        self.state.read().users.keys().cloned().collect()
    }

    pub fn user(&self, name: &str) -> Option<User> {
        self.state.read().users.get(name).cloned()
    }

    pub fn role(&self, name: &str) -> Option<Role> {
        self.state.read().roles.get(name).cloned()
    }
}

/// Stored rows: (name, encoded record).
pub type Rows = Vec<(String, Vec<u8>)>;

/// An auth change as it travels through the log.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthOp {
    Enable,
    Disable,
    UserAdd {
        name: String,
        hash: String,
        no_password: bool,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        hash: String,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        name: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        name: String,
        perm: Permission,
    },
    RoleRevokePermission {
        name: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
}

/// Random printable token text.
pub fn random_token() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::rng();
    (0..16)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_cover() {
        let p = vec![
            (b"a".to_vec(), b"c".to_vec()),
            (b"c".to_vec(), b"e".to_vec()),
        ];
        assert!(covers(&p, b"a", b"e"));
        assert!(covers(&p, b"b", b""));
        assert!(!covers(&p, b"a", b"f"));
        assert!(!covers(&p, b"e", b""));
        let all = vec![(b"\0".to_vec(), b"\0".to_vec())];
        assert!(covers(&all, b"zzz", b"\0"));
        let one = vec![(b"k".to_vec(), vec![])];
        assert!(covers(&one, b"k", b""));
        assert!(!covers(&one, b"k", b"l\0"));
    }

    #[test]
    fn unused_tokens_expire() {
        let a = AuthStore::new(Duration::from_secs(300), 4);
        let t0 = Instant::now();
        for i in 0..1000 {
            a.assign_token_at(&format!("t{i}"), "alice", t0);
        }
        assert_eq!(a.tokens.read().len(), 1000);
        a.assign_token_at("late", "alice", t0 + Duration::from_secs(301));
        assert_eq!(a.tokens.read().len(), 1);
    }

    #[test]
    fn enable_needs_root() {
        let a = AuthStore::new(Duration::from_secs(300), 4);
        assert_eq!(
            a.apply(&AuthOp::Enable).err(),
            Some(Error::RootUserNotExist)
        );
        a.apply(&AuthOp::UserAdd {
            name: "root".into(),
            hash: "x".into(),
            no_password: false,
        })
        .unwrap();
        assert_eq!(
            a.apply(&AuthOp::Enable).err(),
            Some(Error::RootRoleNotExist)
        );
        a.apply(&AuthOp::UserGrantRole {
            user: "root".into(),
            role: "root".into(),
        })
        .unwrap();
        assert!(a.apply(&AuthOp::Enable).is_ok());
        assert!(a.enabled());
        assert_eq!(a.caller(None, None).unwrap(), Caller::User(String::new()));
        assert_eq!(
            a.check(&Caller::User("root".into()), true, b"k", b""),
            Ok(())
        );
        assert_eq!(
            a.check(&Caller::User("bob".into()), false, b"k", b""),
            Err(Error::PermissionDenied)
        );
    }
}
