//! Users, roles, sessions, API tokens and login rate limiting.
//!
//! Passwords are argon2 hashes; session ids and API tokens are random and stored only as their
//! SHA-256, so a copy of the state database opens no account.

use crate::store::{self, SESSIONS, Store, StoreError, TOKENS, USERS};
use chrono::{DateTime, Duration, Utc};
use redb::ReadableTable;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// How long a browser session lasts without use.
pub const SESSION_LIFETIME: Duration = Duration::hours(12);

/// mini-buildd's auth levels, in order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Anyone (anonymous).
    None,
    /// A logged-in user.
    Login,
    /// Staff: migrate, port, retry, cancel.
    Staff,
    /// Administrator: everything.
    Admin,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Role, String> {
        match s {
            "none" => Ok(Role::None),
            "login" => Ok(Role::Login),
            "staff" => Ok(Role::Staff),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?}; use login, staff or admin")),
        }
    }
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Login => "login",
            Role::Staff => "staff",
            Role::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct User {
    pub name: String,
    pub password_hash: String,
    pub role: Role,
    pub created: DateTime<Utc>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Session {
    pub user: String,
    pub expires: DateTime<Utc>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Token {
    pub id: String,
    pub user: String,
    /// The token acts with at most this role (and never more than its user has now).
    pub role: Role,
    pub label: String,
    pub created: DateTime<Utc>,
}

/// Who is asking, and with which role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: Option<String>,
    pub role: Role,
    /// Authenticated by a browser session cookie (so state changes need CSRF protection).
    pub via_session: bool,
}

impl Principal {
    pub fn anonymous() -> Principal {
        Principal { user: None, role: Role::None, via_session: false }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid user name {0:?}: use letters, digits, '.', '_' and '-'")]
    BadName(String),
    #[error("user {0} already exists")]
    Exists(String),
    #[error("no user {0}")]
    NoUser(String),
    #[error("the password is too short: use at least 8 characters")]
    WeakPassword,
    #[error("a token cannot have more rights than its user ({0:?})")]
    RoleTooHigh(Role),
    #[error("no token {0} of user {1}")]
    NoToken(String, String),
    #[error("password hashing: {0}")]
    Hash(String),
}

crate::from_redb_errors!(AuthError);

type Result<T> = std::result::Result<T, AuthError>;

/// 32 random bytes, hex.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS provides randomness");
    hex::encode(b)
}

fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn hash_password(password: &str) -> Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| AuthError::Hash(e.to_string()))?;
    let salt = SaltString::encode_b64(&raw).map_err(|e| AuthError::Hash(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

fn verify_password(hash: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
        && !name.starts_with(['.', '-'])
}

pub fn add_user(store: &Store, name: &str, password: &str, role: Role) -> Result<User> {
    if !valid_name(name) {
        return Err(AuthError::BadName(name.to_owned()));
    }
    if password.chars().count() < 8 {
        return Err(AuthError::WeakPassword);
    }
    let user = User { name: name.to_owned(), password_hash: hash_password(password)?, role, created: Utc::now() };
    let tx = store.write()?;
    {
        let mut t = tx.open_table(USERS)?;
        if t.get(name)?.is_some() {
            return Err(AuthError::Exists(name.to_owned()));
        }
        t.insert(name, store::encode(&user).as_slice())?;
    }
    tx.commit()?;
    Ok(user)
}

pub fn get_user(store: &Store, name: &str) -> Result<Option<User>> {
    let r = store.read()?;
    Ok(store::get_json(&r.open_table(USERS)?, name)?)
}

pub fn list_users(store: &Store) -> Result<Vec<User>> {
    let r = store.read()?;
    let mut out = Vec::new();
    store::scan_prefix(&r.open_table(USERS)?, "", |k, v| {
        out.push(store::decode(k, v)?);
        Ok(())
    })?;
    Ok(out)
}

/// Check a password; `None` if the user does not exist or the password is wrong.
pub fn check_password(store: &Store, name: &str, password: &str) -> Result<Option<User>> {
    let user = get_user(store, name)?;
    match user {
        Some(u) if verify_password(&u.password_hash, password) => Ok(Some(u)),
        Some(_) => Ok(None),
        None => {
            // Spend the same time as a real check, so timing does not reveal who exists.
            let _ = verify_password("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$dGVzdGhhc2g", password);
            Ok(None)
        }
    }
}

/// Start a session; returns the session id for the cookie.
pub fn create_session(store: &Store, user: &str) -> Result<String> {
    let id = random_token();
    let s = Session { user: user.to_owned(), expires: Utc::now() + SESSION_LIFETIME };
    let tx = store.write()?;
    tx.open_table(SESSIONS)?.insert(digest(&id).as_str(), store::encode(&s).as_slice())?;
    tx.commit()?;
    Ok(id)
}

pub fn end_session(store: &Store, id: &str) -> Result<()> {
    let tx = store.write()?;
    tx.open_table(SESSIONS)?.remove(digest(id).as_str())?;
    tx.commit()?;
    Ok(())
}

/// The principal of a session cookie, if the session is valid and its user still exists.
pub fn session_principal(store: &Store, id: &str) -> Result<Option<Principal>> {
    let r = store.read()?;
    let Some(s): Option<Session> = store::get_json(&r.open_table(SESSIONS)?, &digest(id))? else { return Ok(None) };
    if s.expires < Utc::now() {
        return Ok(None);
    }
    let Some(u): Option<User> = store::get_json(&r.open_table(USERS)?, &s.user)? else { return Ok(None) };
    Ok(Some(Principal { user: Some(u.name), role: u.role, via_session: true }))
}

/// Create an API token; returns the secret (shown once) and its record.
pub fn create_token(store: &Store, user: &str, role: Role, label: &str) -> Result<(String, Token)> {
    let u = get_user(store, user)?.ok_or_else(|| AuthError::NoUser(user.to_owned()))?;
    if role > u.role {
        return Err(AuthError::RoleTooHigh(u.role));
    }
    let secret = format!("bb_{}", random_token());
    let token = Token {
        id: secret[3..15].to_owned(),
        user: user.to_owned(),
        role,
        label: label.to_owned(),
        created: Utc::now(),
    };
    let tx = store.write()?;
    tx.open_table(TOKENS)?.insert(digest(&secret).as_str(), store::encode(&token).as_slice())?;
    tx.commit()?;
    Ok((secret, token))
}

pub fn list_tokens(store: &Store, user: &str) -> Result<Vec<Token>> {
    let r = store.read()?;
    let mut out: Vec<Token> = Vec::new();
    store::scan_prefix(&r.open_table(TOKENS)?, "", |k, v| {
        let t: Token = store::decode(k, v)?;
        if t.user == user {
            out.push(t);
        }
        Ok(())
    })?;
    Ok(out)
}

pub fn revoke_token(store: &Store, user: &str, id: &str) -> Result<()> {
    let tx = store.write()?;
    {
        let mut t = tx.open_table(TOKENS)?;
        let mut found = None;
        for item in t.iter()? {
            let (k, v) = item?;
            let tok: Token = store::decode(k.value(), v.value())?;
            if tok.user == user && tok.id == id {
                found = Some(k.value().to_owned());
            }
        }
        let key = found.ok_or_else(|| AuthError::NoToken(id.to_owned(), user.to_owned()))?;
        t.remove(key.as_str())?;
    }
    tx.commit()?;
    Ok(())
}

/// The principal of a bearer token: its role, capped by its user's current role.
pub fn token_principal(store: &Store, secret: &str) -> Result<Option<Principal>> {
    let r = store.read()?;
    let Some(t): Option<Token> = store::get_json(&r.open_table(TOKENS)?, &digest(secret))? else { return Ok(None) };
    let Some(u): Option<User> = store::get_json(&r.open_table(USERS)?, &t.user)? else { return Ok(None) };
    Ok(Some(Principal { user: Some(u.name), role: t.role.min(u.role), via_session: false }))
}

/// Failed logins per client address: after `LIMIT` failures within `WINDOW`, refuse until the
/// window has passed. Checked before any password is hashed, so a flood costs nothing.
pub struct LoginLimiter {
    failures: Mutex<HashMap<IpAddr, Vec<DateTime<Utc>>>>,
}

impl LoginLimiter {
    pub const LIMIT: usize = 5;
    pub const WINDOW: Duration = Duration::minutes(1);

    pub fn new() -> LoginLimiter {
        LoginLimiter { failures: Mutex::new(HashMap::new()) }
    }

    /// `Some(seconds to wait)` if this address is locked out now.
    pub fn locked(&self, ip: IpAddr) -> Option<i64> {
        let now = Utc::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let v = map.entry(ip).or_default();
        v.retain(|t| now - *t < Self::WINDOW);
        (v.len() >= Self::LIMIT).then(|| (Self::WINDOW - (now - v[0])).num_seconds().max(1))
    }

    pub fn failed(&self, ip: IpAddr) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            map.clear();
        }
        map.entry(ip).or_default().push(Utc::now());
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&ip);
    }
}

impl Default for LoginLimiter {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_sessions_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        add_user(&store, "alice", "correct horse", Role::Staff).unwrap();
        assert!(matches!(add_user(&store, "alice", "correct horse", Role::Staff), Err(AuthError::Exists(_))));
        assert!(matches!(add_user(&store, "bob", "short", Role::Login), Err(AuthError::WeakPassword)));
        assert!(matches!(add_user(&store, "../x", "long enough", Role::Login), Err(AuthError::BadName(_))));
        assert!(check_password(&store, "alice", "correct horse").unwrap().is_some());
        assert!(check_password(&store, "alice", "wrong horse").unwrap().is_none());
        assert!(check_password(&store, "nobody", "x").unwrap().is_none());

        let sid = create_session(&store, "alice").unwrap();
        assert_eq!(session_principal(&store, &sid).unwrap().unwrap().role, Role::Staff);
        end_session(&store, &sid).unwrap();
        assert!(session_principal(&store, &sid).unwrap().is_none());

        assert!(matches!(create_token(&store, "alice", Role::Admin, "x"), Err(AuthError::RoleTooHigh(_))));
        let (secret, tok) = create_token(&store, "alice", Role::Login, "ci").unwrap();
        let p = token_principal(&store, &secret).unwrap().unwrap();
        assert_eq!((p.role, p.via_session), (Role::Login, false));
        assert!(token_principal(&store, "bb_nope").unwrap().is_none());
        assert_eq!(list_tokens(&store, "alice").unwrap().len(), 1);
        revoke_token(&store, "alice", &tok.id).unwrap();
        assert!(token_principal(&store, &secret).unwrap().is_none());
    }

    #[test]
    fn limiter_locks_after_failures() {
        let l = LoginLimiter::new();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..LoginLimiter::LIMIT {
            assert!(l.locked(ip).is_none());
            l.failed(ip);
        }
        assert!(l.locked(ip).is_some());
        l.succeeded(ip);
        assert!(l.locked(ip).is_none());
    }
}
