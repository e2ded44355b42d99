//! Users, roles, sessions, API tokens and login rate limiting.
//!
//! Passwords are argon2 hashes; session ids and API tokens are random and stored only as their
//! SHA-256, so a copy of the state database opens no account. A one-time password (the first
//! admin's) must be changed at the first login before anything else. Removing or demoting a user
//! ends their sessions; tokens can expire, and never act above their user's current role.

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
    /// A one-time password: it must be changed before the user can do anything else.
    #[serde(default)]
    pub must_change_password: bool,
    /// Where the user's subscriptions are mailed (set on the account page).
    #[serde(default)]
    pub email: Option<lettre::Address>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Session {
    pub user: String,
    pub expires: DateTime<Utc>,
    /// Made by an API client's login (mini-buildd's client protocol), not by the browser form:
    /// such a session is a credential of a program that no browser holds.
    #[serde(default)]
    pub api: bool,
    /// The session's CSRF token: a state change of the session must carry it (a cookie an
    /// attacker planted from a sibling site is not it).
    #[serde(default)]
    pub csrf: String,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Token {
    /// A random identifier (not part of the secret), to list and revoke it by.
    pub id: String,
    pub user: String,
    /// The token acts with at most this role (and never more than its user has now).
    pub role: Role,
    pub label: String,
    pub created: DateTime<Utc>,
    /// After this, the token is refused.
    #[serde(default)]
    pub expires: Option<DateTime<Utc>>,
}

/// How a request was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Anonymous,
    /// A bearer token: proof of intent by itself.
    Token,
    /// A browser session cookie: a state change needs the CSRF token too.
    Browser,
    /// An API client's session (mini-buildd's client logs in like a browser, then calls with the
    /// cookie only).
    ApiSession,
}

/// Who is asking, and with which role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: Option<String>,
    pub role: Role,
    pub via: Via,
    /// The user still has a one-time password: only changing it is allowed.
    pub must_change_password: bool,
    /// A session's digest (to keep it when the others end) and its CSRF token.
    pub session: Option<(String, String)>,
}

impl Principal {
    pub fn anonymous() -> Principal {
        Principal { user: None, role: Role::None, via: Via::Anonymous, must_change_password: false, session: None }
    }

    /// The session's CSRF token, if it is a session.
    pub fn csrf(&self) -> Option<&str> {
        self.session.as_ref().map(|(_, c)| c.as_str()).filter(|c| !c.is_empty())
    }

    /// Authenticated by a browser session (so state changes need CSRF protection).
    pub fn via_browser(&self) -> bool {
        self.via == Via::Browser
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
    #[error("the current password is wrong")]
    WrongPassword,
    #[error("the new password must differ from the one-time password")]
    SamePassword,
    #[error("cannot remove or demote the last admin; make another user an admin first")]
    LastAdmin,
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
    if let Some(django) = hash.strip_prefix(DJANGO_PBKDF2) {
        return verify_django(django, password);
    }
    PasswordHash::new(hash).is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// The prefix of Django's PBKDF2-SHA256 hashes (`pbkdf2_sha256$<rounds>$<salt>$<base64>`), as a
/// mini-buildd instance's users come with them; replaced by argon2 at their first login.
const DJANGO_PBKDF2: &str = "pbkdf2_sha256$";
/// Most rounds a taken-over hash may ask for (Django 4.2 uses 600,000): a forged hash must not
/// make each login burn minutes.
const DJANGO_MAX_ROUNDS: u32 = 2_000_000;

fn verify_django(rest: &str, password: &str) -> bool {
    use base64::Engine;
    let mut parts = rest.splitn(3, '$');
    let (Some(rounds), Some(salt), Some(want)) = (parts.next(), parts.next(), parts.next()) else { return false };
    let Ok(rounds) = rounds.parse::<u32>() else { return false };
    let Ok(want) = base64::engine::general_purpose::STANDARD.decode(want) else { return false };
    if rounds == 0 || rounds > DJANGO_MAX_ROUNDS || want.len() != 32 {
        return false;
    }
    let mut got = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt.as_bytes(), rounds, &mut got);
    // Constant time: compare digests of both.
    Sha256::digest(got) == Sha256::digest(&want)
}

/// Whether a stored hash is one taken over from Django (to be replaced by argon2).
fn is_django(hash: &str) -> bool {
    hash.starts_with(DJANGO_PBKDF2)
}

/// Take over a user from another instance (mini-buildd's `auth_user`) with their password
/// hash as it is: Django's PBKDF2-SHA256 (its default), which the first login replaces with
/// argon2. Other hashes are refused (an argon2 hash would bring its own cost settings). An
/// existing user of the name is kept, and refused here.
pub fn import_user(store: &Store, name: &str, hash: &str, role: Role, email: Option<lettre::Address>) -> Result<User> {
    if !valid_name(name) {
        return Err(AuthError::BadName(name.to_owned()));
    }
    if !is_django(hash) || hash.len() > 512 {
        let algo = hash.split('$').next().unwrap_or_default().chars().take(20).collect::<String>();
        return Err(AuthError::Hash(format!(
            "its password hash ({algo:?}) is not Django's pbkdf2_sha256, the only one taken over; set a password with `buildbay user add`"
        )));
    }
    let user = User {
        name: name.to_owned(),
        password_hash: hash.to_owned(),
        role,
        created: Utc::now(),
        must_change_password: false,
        email,
    };
    insert_new(store, user)
}

/// Store a user that must not exist yet.
fn insert_new(store: &Store, user: User) -> Result<User> {
    let tx = store.write()?;
    {
        let mut t = tx.open_table(USERS)?;
        if t.get(user.name.as_str())?.is_some() {
            return Err(AuthError::Exists(user.name));
        }
        t.insert(user.name.as_str(), store::encode(&user).as_slice())?;
    }
    tx.commit()?;
    Ok(user)
}

fn valid_name(name: &str) -> bool {
    name != LOCAL_ADMIN
        && !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
        && !name.starts_with(['.', '-'])
}

fn check_strength(password: &str) -> Result<()> {
    if password.chars().count() < 8 { Err(AuthError::WeakPassword) } else { Ok(()) }
}

pub fn add_user(store: &Store, name: &str, password: &str, role: Role) -> Result<User> {
    add_user_with(store, name, password, role, false)
}

/// Create a user; `one_time`: the password must be changed at the first login.
pub fn add_user_with(store: &Store, name: &str, password: &str, role: Role, one_time: bool) -> Result<User> {
    if !valid_name(name) {
        return Err(AuthError::BadName(name.to_owned()));
    }
    check_strength(password)?;
    let user = User {
        name: name.to_owned(),
        password_hash: hash_password(password)?,
        role,
        created: Utc::now(),
        must_change_password: one_time,
        email: None,
    };
    insert_new(store, user)
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
        Some(u) if verify_password(&u.password_hash, password) => {
            if is_django(&u.password_hash) {
                // Replaced only if nothing changed the user meanwhile (a reset, a removal).
                let new = hash_password(password)?;
                let tx = store.write()?;
                {
                    let mut t = tx.open_table(USERS)?;
                    let now: Option<User> = store::get_json(&t, name)?;
                    if let Some(mut now) = now.filter(|n| n.password_hash == u.password_hash) {
                        now.password_hash = new;
                        t.insert(name, store::encode(&now).as_slice())?;
                    }
                }
                tx.commit()?;
            }
            Ok(Some(u))
        }
        Some(_) => Ok(None),
        None => {
            // Spend the same time as a real check, so timing does not reveal who exists.
            let _ = verify_password("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$dGVzdGhhc2g", password);
            Ok(None)
        }
    }
}

/// Change a user's password after checking the current one; ends every session of the user but
/// `keep` (the digest of the session that asks), and clears a one-time password.
pub fn change_password(store: &Store, name: &str, old: &str, new: &str, keep: Option<&str>) -> Result<()> {
    check_strength(new)?;
    let mut u = get_user(store, name)?.ok_or_else(|| AuthError::NoUser(name.to_owned()))?;
    if !verify_password(&u.password_hash, old) {
        return Err(AuthError::WrongPassword);
    }
    if u.must_change_password && old == new {
        return Err(AuthError::SamePassword);
    }
    u.password_hash = hash_password(new)?;
    u.must_change_password = false;
    let tx = store.write()?;
    tx.open_table(USERS)?.insert(name, store::encode(&u).as_slice())?;
    tx.commit()?;
    end_sessions_but(store, name, keep)?;
    Ok(())
}

/// Set a new password for a user as an administrator (a one-time one: the user changes it).
pub fn reset_password(store: &Store, name: &str, password: &str) -> Result<()> {
    check_strength(password)?;
    let mut u = get_user(store, name)?.ok_or_else(|| AuthError::NoUser(name.to_owned()))?;
    u.password_hash = hash_password(password)?;
    u.must_change_password = true;
    let tx = store.write()?;
    tx.open_table(USERS)?.insert(name, store::encode(&u).as_slice())?;
    tx.commit()?;
    revoke_all(store, name)?;
    Ok(())
}

/// The admins other than `name`.
fn other_admins(store: &Store, name: &str) -> Result<usize> {
    Ok(list_users(store)?.iter().filter(|u| u.role == Role::Admin && u.name != name).count())
}

/// Change a user's role; a demotion ends their sessions and caps their tokens (tokens never act
/// above their user's role).
pub fn set_role(store: &Store, name: &str, role: Role) -> Result<User> {
    let mut u = get_user(store, name)?.ok_or_else(|| AuthError::NoUser(name.to_owned()))?;
    if u.role == Role::Admin && role != Role::Admin && other_admins(store, name)? == 0 {
        return Err(AuthError::LastAdmin);
    }
    let demoted = role < u.role;
    u.role = role;
    let tx = store.write()?;
    tx.open_table(USERS)?.insert(name, store::encode(&u).as_slice())?;
    tx.commit()?;
    if demoted {
        end_sessions(store, name)?;
    }
    Ok(u)
}

/// Set (or, with `None`, clear) the address a user's subscriptions are mailed to.
pub fn set_email(store: &Store, name: &str, email: Option<lettre::Address>) -> Result<User> {
    let tx = store.write()?;
    let u = {
        let mut t = tx.open_table(USERS)?;
        let mut u: User = match t.get(name)? {
            Some(v) => store::decode(name, v.value())?,
            None => return Err(AuthError::NoUser(name.to_owned())),
        };
        u.email = email;
        t.insert(name, store::encode(&u).as_slice())?;
        u
    };
    tx.commit()?;
    Ok(u)
}

/// Remove a user with their sessions and tokens.
pub fn remove_user(store: &Store, name: &str) -> Result<()> {
    let u = get_user(store, name)?.ok_or_else(|| AuthError::NoUser(name.to_owned()))?;
    if u.role == Role::Admin && other_admins(store, name)? == 0 {
        return Err(AuthError::LastAdmin);
    }
    revoke_all(store, name)?;
    let tx = store.write()?;
    tx.open_table(USERS)?.remove(name)?;
    tx.commit()?;
    Ok(())
}

/// End every session of a user.
pub fn end_sessions(store: &Store, name: &str) -> Result<usize> {
    end_sessions_but(store, name, None)
}

/// End every session of a user but `keep` (a session digest).
fn end_sessions_but(store: &Store, name: &str, keep: Option<&str>) -> Result<usize> {
    let tx = store.write()?;
    let n = {
        let mut t = tx.open_table(SESSIONS)?;
        let mut gone = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            let s: Session = store::decode(k.value(), v.value())?;
            if s.user == name && Some(k.value()) != keep {
                gone.push(k.value().to_owned());
            }
        }
        for k in &gone {
            t.remove(k.as_str())?;
        }
        gone.len()
    };
    tx.commit()?;
    Ok(n)
}

/// End every session and revoke every token of a user; returns how many of each.
pub fn revoke_all(store: &Store, name: &str) -> Result<(usize, usize)> {
    let sessions = end_sessions(store, name)?;
    let tx = store.write()?;
    let tokens = {
        let mut t = tx.open_table(TOKENS)?;
        let mut gone = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            let tok: Token = store::decode(k.value(), v.value())?;
            if tok.user == name {
                gone.push(k.value().to_owned());
            }
        }
        for k in &gone {
            t.remove(k.as_str())?;
        }
        gone.len()
    };
    tx.commit()?;
    Ok((sessions, tokens))
}

/// Drop expired sessions and tokens; returns how many.
pub fn expire(store: &Store) -> Result<usize> {
    let now = Utc::now();
    let tx = store.write()?;
    let mut n = 0;
    {
        let mut t = tx.open_table(SESSIONS)?;
        let mut gone = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            if store::decode::<Session>(k.value(), v.value()).is_ok_and(|s| s.expires < now) {
                gone.push(k.value().to_owned());
            }
        }
        for k in &gone {
            t.remove(k.as_str())?;
        }
        n += gone.len();
    }
    {
        let mut t = tx.open_table(TOKENS)?;
        let mut gone = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            if store::decode::<Token>(k.value(), v.value()).is_ok_and(|s| s.expires.is_some_and(|e| e < now)) {
                gone.push(k.value().to_owned());
            }
        }
        for k in &gone {
            t.remove(k.as_str())?;
        }
        n += gone.len();
    }
    tx.commit()?;
    Ok(n)
}

/// Start a session; returns the session id for the cookie and its CSRF token. `api`: an API
/// client's login.
pub fn create_session(store: &Store, user: &str, api: bool) -> Result<(String, String)> {
    let id = random_token();
    let s = Session { user: user.to_owned(), expires: Utc::now() + SESSION_LIFETIME, api, csrf: random_token() };
    let csrf = s.csrf.clone();
    let tx = store.write()?;
    tx.open_table(SESSIONS)?.insert(digest(&id).as_str(), store::encode(&s).as_slice())?;
    tx.commit()?;
    Ok((id, csrf))
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
    let via = if s.api { Via::ApiSession } else { Via::Browser };
    Ok(Some(Principal {
        user: Some(u.name),
        role: u.role,
        via,
        must_change_password: u.must_change_password,
        session: Some((digest(id), s.csrf)),
    }))
}

/// Create an API token (valid for `days`, or until revoked); returns the secret (shown once)
/// and its record.
pub fn create_token(store: &Store, user: &str, role: Role, label: &str, days: Option<u32>) -> Result<(String, Token)> {
    let u = get_user(store, user)?.ok_or_else(|| AuthError::NoUser(user.to_owned()))?;
    if role > u.role {
        return Err(AuthError::RoleTooHigh(u.role));
    }
    let secret = format!("bb_{}", random_token());
    let token = Token {
        id: random_token()[..12].to_owned(),
        user: user.to_owned(),
        role,
        label: label.to_owned(),
        created: Utc::now(),
        expires: days.map(|d| Utc::now() + Duration::days(i64::from(d))),
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
    if t.expires.is_some_and(|e| e < Utc::now()) {
        return Ok(None);
    }
    let Some(u): Option<User> = store::get_json(&r.open_table(USERS)?, &t.user)? else { return Ok(None) };
    Ok(Some(Principal {
        user: Some(u.name),
        role: t.role.min(u.role),
        via: Via::Token,
        must_change_password: u.must_change_password,
        session: None,
    }))
}

/// The running daemon's credential for local administration (`buildbay user …` and
/// `buildbay uploader …` while it runs): a random bearer token made at each start, written with
/// the daemon's loopback URL into `<state>/run/local-admin` (mode 0600: readable by the daemon's
/// user and root, who may administer it anyway), known to the daemon only as its SHA-256, and
/// dead when the daemon stops.
pub struct LocalAdmin {
    digest: String,
    path: std::path::PathBuf,
}

/// The user name local administration acts as (in events and logs).
pub const LOCAL_ADMIN: &str = "local-admin";

impl LocalAdmin {
    pub fn file(state: &std::path::Path) -> std::path::PathBuf {
        state.join("run/local-admin")
    }

    /// Make a new credential for the daemon serving its API at `url`, replacing an old file.
    pub fn create(state: &std::path::Path, url: &str) -> std::io::Result<LocalAdmin> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = LocalAdmin::file(state);
        let dir = path.parent().expect("a file in run/");
        std::fs::create_dir_all(dir)?;
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let secret = format!("bbl_{}", random_token());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)?;
        f.write_all(serde_json::json!({"url": url, "token": secret}).to_string().as_bytes())?;
        f.sync_all()?;
        Ok(LocalAdmin { digest: digest(&secret), path })
    }

    /// The admin principal, when `secret` is this credential.
    pub fn principal(&self, secret: &str) -> Option<Principal> {
        // Compared as digests: no timing of the secret itself.
        (digest(secret) == self.digest).then(|| Principal {
            user: Some(LOCAL_ADMIN.to_owned()),
            role: Role::Admin,
            via: Via::Token,
            must_change_password: false,
            session: None,
        })
    }

    /// The daemon's URL and the token, as a local administrator reads them (bounded). The
    /// file must be the state directory owner's, readable by it only, and name a loopback
    /// URL: a password is sent there.
    pub fn read(state: &std::path::Path) -> std::io::Result<(String, String)> {
        use std::io::Read;
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let path = LocalAdmin::file(state);
        let invalid =
            |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {why}", path.display()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(&path)?;
        let (meta, owner) = (f.metadata()?, std::fs::metadata(state)?.uid());
        if !meta.is_file() || meta.uid() != owner || meta.mode() & 0o077 != 0 {
            return Err(invalid(format!("not a file of the state's owner (uid {owner}) with mode 0600")));
        }
        let mut text = String::new();
        f.take(4096).read_to_string(&mut text)?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let (Some(u), Some(t)) = (v["url"].as_str(), v["token"].as_str()) else {
            return Err(invalid("no url and token".into()));
        };
        let loopback = url::Url::parse(u).ok().is_some_and(|url| {
            url.scheme() == "http"
                && match url.host() {
                    Some(url::Host::Ipv4(a)) => a.is_loopback(),
                    Some(url::Host::Ipv6(a)) => a.is_loopback(),
                    _ => false,
                }
        });
        if !loopback {
            return Err(invalid(format!("{u:?} is not a loopback http URL")));
        }
        Ok((u.to_owned(), t.to_owned()))
    }
}

impl Drop for LocalAdmin {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Login attempts, bounded before any password is hashed: per client address (IPv6 by its
/// /64), per user name, and for everyone together. An attempt takes its place in every bucket
/// before the hash runs and gives it back only when it succeeded, so parallel attempts count
/// at once; and at most [`LoginLimiter::HASHERS`] hashes run at a time.
pub struct LoginLimiter {
    buckets: Mutex<HashMap<Bucket, Vec<DateTime<Utc>>>>,
    hashers: tokio::sync::Semaphore,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Bucket {
    Address(IpAddr),
    User(String),
    All,
}

/// Why an attempt is not let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Too many attempts: wait this many seconds.
    Wait(i64),
    /// Every hasher is busy.
    Busy,
}

/// A reserved attempt: call `succeeded` when the password was right.
pub struct Attempt<'a> {
    limiter: &'a LoginLimiter,
    keys: Vec<Bucket>,
    at: DateTime<Utc>,
    _hasher: tokio::sync::SemaphorePermit<'a>,
}

impl Attempt<'_> {
    /// The password was right: this attempt does not count (the failures before it still do).
    pub fn succeeded(self) {
        let mut map = self.limiter.buckets.lock().unwrap_or_else(|p| p.into_inner());
        for k in &self.keys {
            if let Some(v) = map.get_mut(k)
                && let Some(i) = v.iter().position(|t| *t == self.at)
            {
                v.remove(i);
            }
        }
    }
}

/// The bucket of an address: IPv4 as it is, IPv6 by its /64 (one host has a whole /64).
fn address_bucket(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(a) => {
            let mut o = a.octets();
            o[8..].fill(0);
            IpAddr::V6(o.into())
        }
        v4 => v4,
    }
}

impl LoginLimiter {
    /// Attempts per address within `WINDOW`.
    pub const PER_ADDRESS: usize = 5;
    /// Attempts per user name within `WINDOW` (from any address).
    pub const PER_USER: usize = 20;
    /// Attempts of everyone together within `WINDOW`.
    pub const ALL: usize = 300;
    pub const WINDOW: Duration = Duration::minutes(1);
    /// Password hashes at a time.
    pub const HASHERS: usize = 2;

    pub fn new() -> LoginLimiter {
        LoginLimiter { buckets: Mutex::new(HashMap::new()), hashers: tokio::sync::Semaphore::new(Self::HASHERS) }
    }

    /// Take a place for one attempt in every bucket, and a hasher, or say why not. An attempt
    /// from this host (loopback) is counted only by its address, so that nobody on the network
    /// can lock the administrator out of a local login.
    pub fn reserve(&self, ip: IpAddr, user: &str) -> std::result::Result<Attempt<'_>, Refusal> {
        let now = Utc::now();
        let mut keys = vec![Bucket::Address(address_bucket(ip))];
        if !ip.to_canonical().is_loopback() {
            keys.extend([Bucket::User(user.to_owned()), Bucket::All]);
        }
        let limits = [Self::PER_ADDRESS, Self::PER_USER, Self::ALL];
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            map.retain(|_, v| v.iter().any(|t| now - *t < Self::WINDOW));
        }
        let mut wait = 0;
        for (k, limit) in keys.iter().zip(limits) {
            let v = map.entry(k.clone()).or_default();
            v.retain(|t| now - *t < Self::WINDOW);
            if v.len() >= limit {
                wait = wait.max((Self::WINDOW - (now - v[0])).num_seconds().max(1));
            }
        }
        if wait > 0 {
            return Err(Refusal::Wait(wait));
        }
        let hasher = self.hashers.try_acquire().map_err(|_| Refusal::Busy)?;
        for k in &keys {
            map.entry(k.clone()).or_default().push(now);
        }
        Ok(Attempt { limiter: self, keys, at: now, _hasher: hasher })
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
    fn a_taken_over_django_hash_logs_in_once_then_is_argon2() {
        // Python's hashlib.pbkdf2_hmac('sha256', password, salt, 1000), in Django's form.
        let hash = "pbkdf2_sha256$1000$dCUA93c2hg5pBtwqeQ1zcc$b4QijvIvjakDn3RLaqAfOE1S7OAifYEAjcIp2i0AW2M=";
        assert!(verify_password(hash, "mbd-admin-password"));
        assert!(!verify_password(hash, "mbd-admin-passwore"));
        // Hostile hashes: too many rounds, no rounds, a short digest, not base64, missing parts.
        for forged in [
            "pbkdf2_sha256$4000000000$s$b4QijvIvjakDn3RLaqAfOE1S7OAifYEAjcIp2i0AW2M=",
            "pbkdf2_sha256$0$s$b4QijvIvjakDn3RLaqAfOE1S7OAifYEAjcIp2i0AW2M=",
            "pbkdf2_sha256$1000$s$AAAA",
            "pbkdf2_sha256$1000$s$!!!",
            "pbkdf2_sha256$1000",
        ] {
            assert!(!verify_password(forged, "mbd-admin-password"), "{forged}");
        }
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(matches!(import_user(&store, "x", "md5$abc", Role::Login, None), Err(AuthError::Hash(_))));
        import_user(&store, "admin", hash, Role::Admin, None).unwrap();
        assert!(matches!(import_user(&store, "admin", hash, Role::Admin, None), Err(AuthError::Exists(_))));
        assert!(check_password(&store, "admin", "wrong").unwrap().is_none());
        assert!(is_django(&get_user(&store, "admin").unwrap().unwrap().password_hash));
        assert!(check_password(&store, "admin", "mbd-admin-password").unwrap().is_some());
        let rehashed = get_user(&store, "admin").unwrap().unwrap().password_hash;
        assert!(rehashed.starts_with("$argon2"), "{rehashed}");
        assert!(check_password(&store, "admin", "mbd-admin-password").unwrap().is_some());
    }

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

        let (sid, _) = create_session(&store, "alice", false).unwrap();
        assert_eq!(session_principal(&store, &sid).unwrap().unwrap().role, Role::Staff);
        end_session(&store, &sid).unwrap();
        assert!(session_principal(&store, &sid).unwrap().is_none());

        assert!(matches!(create_token(&store, "alice", Role::Admin, "x", None), Err(AuthError::RoleTooHigh(_))));
        let (secret, tok) = create_token(&store, "alice", Role::Login, "ci", None).unwrap();
        assert!(!secret.contains(&tok.id), "the token id is not part of the secret");
        let p = token_principal(&store, &secret).unwrap().unwrap();
        assert_eq!((p.role, p.via), (Role::Login, Via::Token));
        assert!(token_principal(&store, "bb_nope").unwrap().is_none());
        assert_eq!(list_tokens(&store, "alice").unwrap().len(), 1);
        revoke_token(&store, "alice", &tok.id).unwrap();
        assert!(token_principal(&store, &secret).unwrap().is_none());
    }

    #[test]
    fn accounts_change_and_end_their_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        add_user_with(&store, "root", "one-time-pw", Role::Admin, true).unwrap();
        let (sid, _) = create_session(&store, "root", false).unwrap();
        assert!(session_principal(&store, &sid).unwrap().unwrap().must_change_password);
        assert!(matches!(
            change_password(&store, "root", "one-time-pw", "one-time-pw", None),
            Err(AuthError::SamePassword)
        ));
        assert!(matches!(
            change_password(&store, "root", "wrong", "a-new-password", None),
            Err(AuthError::WrongPassword)
        ));
        let (other, _) = create_session(&store, "root", false).unwrap();
        let keep = session_principal(&store, &sid).unwrap().unwrap().session.unwrap().0;
        change_password(&store, "root", "one-time-pw", "a-new-password", Some(&keep)).unwrap();
        assert!(!session_principal(&store, &sid).unwrap().unwrap().must_change_password);
        assert!(session_principal(&store, &other).unwrap().is_none(), "the other sessions end");
        assert!(matches!(set_role(&store, "root", Role::Login), Err(AuthError::LastAdmin)));
        add_user(&store, "bob", "bob-password", Role::Staff).unwrap();
        let (bob, _) = create_session(&store, "bob", true).unwrap();
        let (bob_token, _) = create_token(&store, "bob", Role::Staff, "ci", Some(30)).unwrap();
        assert_eq!(session_principal(&store, &bob).unwrap().unwrap().via, Via::ApiSession);
        set_role(&store, "bob", Role::Login).unwrap();
        assert!(session_principal(&store, &bob).unwrap().is_none(), "a demotion ends the sessions");
        assert_eq!(token_principal(&store, &bob_token).unwrap().unwrap().role, Role::Login, "tokens are capped");
        remove_user(&store, "bob").unwrap();
        assert!(token_principal(&store, &bob_token).unwrap().is_none(), "removal revokes the tokens");
        assert!(matches!(remove_user(&store, "root"), Err(AuthError::LastAdmin)));
    }

    #[test]
    fn expired_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        add_user(&store, "alice", "correct horse", Role::Staff).unwrap();
        let (secret, _) = create_token(&store, "alice", Role::Login, "ci", Some(0)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(token_principal(&store, &secret).unwrap().is_none());
        assert_eq!(expire(&store).unwrap(), 1);
    }

    #[test]
    fn the_limiter_reserves_before_hashing_and_bounds_the_hashers() {
        let l = LoginLimiter::new();
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let neighbour: IpAddr = "2001:db8::ffff".parse().unwrap();
        // Parallel attempts count at once: the hashers run out first.
        let a = l.reserve(ip, "alice").unwrap();
        let b = l.reserve(neighbour, "alice").unwrap();
        assert_eq!(l.reserve(ip, "alice").err(), Some(Refusal::Busy));
        drop(a);
        drop(b);
        for _ in 0..LoginLimiter::PER_ADDRESS - 2 {
            drop(l.reserve(ip, "alice").unwrap());
        }
        // The /64 is one bucket.
        assert!(matches!(l.reserve(neighbour, "alice"), Err(Refusal::Wait(_))));
        assert!(l.reserve("192.0.2.1".parse().unwrap(), "alice").is_ok());
        // A success does not count, but does not forgive the failures before it either.
        let l = LoginLimiter::new();
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..LoginLimiter::PER_ADDRESS - 1 {
            drop(l.reserve(v4, "bob").unwrap());
        }
        l.reserve(v4, "bob").unwrap().succeeded();
        assert!(l.reserve(v4, "bob").is_ok());
        assert!(l.reserve(v4, "bob").is_err());
        // Attempts from the network cannot lock out a user's login from this host.
        let l = LoginLimiter::new();
        for i in 0..LoginLimiter::PER_USER {
            drop(l.reserve(format!("198.51.100.{i}").parse().unwrap(), "admin").unwrap());
        }
        assert!(l.reserve("198.51.100.200".parse().unwrap(), "admin").is_err());
        assert!(l.reserve("127.0.0.1".parse().unwrap(), "admin").is_ok());
    }
}
