//! Notification mail, mini-buildd's model: who gets an event ([`recipients`], pure), the mail
//! itself ([`compose`], pure: a summary, the reason it was sent, the event's JSON attached), and
//! a queue in redb that the SMTP sender ([`Mailer`]) drains with retries.
//!
//! An event commits with a mark ([`store::MAIL_PENDING`]); [`collect`] turns marks into queued
//! mail in one transaction, so a notification is neither lost nor sent twice across a restart,
//! and a mail server that is down never holds up the pipeline. The queue is bounded
//! ([`QUEUE_MAX`]); mail that could not be delivered for [`GIVE_UP_AFTER`] is dropped, with a
//! warning in the journal.

use crate::auth;
use crate::config::{DaemonMail, Repository, RepositoryMail, Subscription};
use crate::events::Event;
use crate::instance::Instance;
use crate::store::{self, EVENTS, MAIL_PENDING, MAIL_QUEUE, Store};
use chrono::{DateTime, Duration, Utc};
use lettre::message::{Mailbox, MultiPart, SinglePart, header::ContentType};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use redb::{ReadableTable, ReadableTableMetadata};
use std::str::FromStr;

/// At most this many mails wait in the queue; beyond it, new mail is dropped (and said so).
pub const QUEUE_MAX: u64 = 10_000;
/// Mail the server has not taken for this long is dropped.
pub const GIVE_UP_AFTER: Duration = Duration::days(3);
/// Events worked out per transaction.
const COLLECT_BATCH: usize = 200;
/// Mails sent per round.
const SEND_BATCH: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Instance(#[from] crate::instance::InstanceError),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error("--smtp {0}")]
    Config(String),
}

impl From<redb::Error> for MailError {
    fn from(e: redb::Error) -> MailError {
        MailError::Store(e.into())
    }
}
macro_rules! redb_errors {
    ($($t:ty),*) => {$(impl From<$t> for MailError { fn from(e: $t) -> MailError { MailError::Store(e.into()) } })*};
}
redb_errors!(redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

pub type Result<T> = std::result::Result<T, MailError>;

/// Why an address gets a mail (mini-buildd's reasons, said in the mail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    Daemon,
    Repository,
    ChangedBy,
    Maintainer,
    Subscriber,
}

impl Reason {
    pub fn explain(self) -> &'static str {
        match self {
            Reason::Daemon => {
                "Your address is configured to get all notifications (ask the administrators if you do not want this)."
            }
            Reason::Repository => {
                "Your address is configured to get all notifications of this repository (ask the administrators if you do not want this)."
            }
            Reason::ChangedBy => "Your address is the uploader of the package (Changed-By in the changes).",
            Reason::Maintainer => "Your address is the maintainer of the package (Maintainer in the changes).",
            Reason::Subscriber => "Your account has a matching subscription (see your account page).",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub to: Mailbox,
    pub reason: Reason,
}

/// A user with a subscription: the address it is mailed to, when the user set one.
pub struct Subscriber<'a> {
    pub subscription: &'a Subscription,
    pub email: Option<&'a Address>,
}

/// mini-buildd's default `allow_emails_to`: addresses at this host.
pub fn default_allow(host: &str) -> String {
    format!(".*@{}", regex::escape(host))
}

/// The sender when the daemon sets no `email_address`: `buildbay <identity> <buildbay@host>`.
pub fn default_from(identity: &str, host: &str) -> Mailbox {
    let address = Address::new("buildbay", host)
        .or_else(|_| Address::new("buildbay", "localhost"))
        .unwrap_or_else(|_| unreachable!("buildbay@localhost is an address"));
    Mailbox::new(Some(format!("buildbay {identity}")), address)
}

/// The `allow_emails_to` in force, compiled to match a whole address (`None`: allows nothing).
fn allow_regex(daemon: &DaemonMail, host: &str) -> Option<regex::Regex> {
    let allow = daemon.allow_emails_to.clone().unwrap_or_else(|| default_allow(host));
    // Checked when it was saved; one that does not compile allows nothing.
    regex::RegexBuilder::new(&format!("^(?:{allow})$")).size_limit(1 << 20).build().ok()
}

/// Whether `allow_emails_to` lets mail go to `address` (matched against the whole address,
/// never against a display name).
pub fn allows(daemon: &DaemonMail, host: &str, address: &Address) -> bool {
    let a: &str = address.as_ref();
    allow_regex(daemon, host).is_some_and(|r| r.is_match(a))
}

/// Who gets `event`, each address once, in mini-buildd's order: the daemon's `notify`, the
/// repository's `notify`, Changed-By (when the repository says so, or when the upload names no
/// repository) and Maintainer (when the repository says so), then the matching subscribers.
/// Changed-By, Maintainer and subscribers' addresses get mail only when `allow_emails_to`
/// matches the whole address (unlike mini-buildd, which searches the field's text, display name
/// included).
pub fn recipients(
    event: &Event,
    daemon: &DaemonMail,
    host: &str,
    repo: Option<&RepositoryMail>,
    subscribers: &[Subscriber],
) -> Vec<Recipient> {
    let mut out: Vec<Recipient> = Vec::new();
    let mut add = |to: Mailbox, reason: Reason| {
        let same = |r: &Recipient| {
            let (a, b): (&str, &str) = (r.to.email.as_ref(), to.email.as_ref());
            a.eq_ignore_ascii_case(b)
        };
        if !out.iter().any(same) {
            out.push(Recipient { to, reason });
        }
    };
    for m in &daemon.notify {
        add(m.clone(), Reason::Daemon);
    }
    if let Some(r) = repo {
        for m in &r.notify {
            add(m.clone(), Reason::Repository);
        }
    }
    let allow = allow_regex(daemon, host);
    let allowed = |a: &Address| {
        let a: &str = a.as_ref();
        allow.as_ref().is_some_and(|r| r.is_match(a))
    };
    let from_upload = |field: &str| -> Option<Mailbox> {
        let m = Mailbox::from_str(event.extra.get(field)?.as_str()?).ok()?;
        allowed(&m.email).then_some(m)
    };
    if repo.is_none_or(|r| r.notify_changed_by)
        && let Some(m) = from_upload("changed_by")
    {
        add(m, Reason::ChangedBy);
    }
    if repo.is_some_and(|r| r.notify_maintainer)
        && let Some(m) = from_upload("maintainer")
    {
        add(m, Reason::Maintainer);
    }
    for s in subscribers {
        let sub = s.subscription;
        let matches = (sub.source.is_empty() || sub.source == event.source)
            && (sub.distribution.is_empty() || sub.distribution == event.distribution);
        if matches && let Some(a) = s.email.filter(|a| allowed(a)) {
            add(Mailbox::new(None, a.clone()), Reason::Subscriber);
        }
    }
    out
}

/// What every mail of an instance says about where it came from.
pub struct Sender {
    pub identity: String,
    pub host: String,
    pub from: Mailbox,
    /// The instance's web address (`http://host:port`).
    pub url: String,
}

/// The event as one line, as mini-buildd's subject has it:
/// `TYPE(dist): source-version (arch): error`.
pub fn headline(e: &Event) -> String {
    let arch = e.extra.get("architecture").and_then(|a| a.as_str()).unwrap_or("None");
    let mut s = format!("{}({}): {}-{} ({arch})", e.kind.as_str(), e.distribution, e.source, e.version);
    if let Some(d) = e.extra.get("error").and_then(|x| x.get("detail")).and_then(|d| d.as_str()) {
        s.push_str(": ");
        s.push_str(d);
    }
    s
}

/// One notification mail: the summary and the reason in the text, the event's JSON attached.
pub fn compose(event: &Event, to: &Recipient, sender: &Sender) -> std::result::Result<lettre::Message, String> {
    let mut body = String::new();
    let mut line = |k: &str, v: &str| body.push_str(&format!("{k:<12}: {v}\n"));
    line("Type", event.kind.as_str());
    line("Distribution", &event.distribution);
    line("Source", &event.source);
    line("Version", &event.version);
    line("Time", &crate::events::iso::format(&event.timestamp));
    for (k, label) in [("architecture", "Architecture"), ("changed_by", "Changed-By"), ("key", "Key")] {
        if let Some(v) = event.extra.get(k).and_then(|v| v.as_str()).filter(|v| !v.is_empty()) {
            line(label, v);
        }
    }
    if let Some(d) = event.extra.get("error").and_then(|x| x.get("detail")).and_then(|d| d.as_str()) {
        line("Error", d);
    }
    if !event.source.is_empty() {
        line("Package", &format!("{}/mini_buildd/sources/{}/", sender.url, event.source));
    }
    body.push_str(&format!(
        "\n-- \nbuildbay instance '{}' at {} <{}>\nReason for this mail: {}\nVisit buildbay: {}/\n",
        sender.identity,
        sender.host,
        sender.from.email,
        to.reason.explain(),
        sender.url
    ));
    let json = serde_json::to_string_pretty(event).map_err(|e| e.to_string())?;
    let subject: String = format!("[buildbay-{}] {}", sender.identity, headline(event))
        .chars()
        .filter(|c| !c.is_control())
        .take(900)
        .collect();
    lettre::Message::builder()
        .message_id(Some(format!(
            "<{}.{}@{}>",
            event.timestamp.timestamp_micros(),
            crate::auth::random_token(),
            sender.host
        )))
        .from(sender.from.clone())
        .to(to.to.clone())
        .subject(subject)
        .multipart(
            MultiPart::mixed().singlepart(SinglePart::plain(body)).singlepart(
                lettre::message::Attachment::new(event.file_name())
                    .body(json, ContentType::parse("application/json").map_err(|e| e.to_string())?),
            ),
        )
        .map_err(|e| e.to_string())
}

/// A mail waiting for the SMTP server: its bytes, made once (so a retry sends the same
/// Message-ID), and its envelope.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Queued {
    pub from: Address,
    pub to: Address,
    pub reason: Reason,
    /// The event, as its headline.
    pub event: String,
    pub message: String,
    pub created: DateTime<Utc>,
    pub attempts: u32,
    pub next_try: DateTime<Utc>,
    pub last_error: Option<String>,
}

/// The mails waiting.
pub fn queued(store: &Store) -> store::Result<u64> {
    let tx = store.read()?;
    Ok(match tx.open_table(MAIL_QUEUE) {
        Ok(t) => t.len()?,
        Err(redb::TableError::TableDoesNotExist(_)) => 0,
        Err(e) => return Err(e.into()),
    })
}

/// What one [`collect`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub events: usize,
    pub queued: usize,
    /// Mail not queued because the queue was full, or that could not be made.
    pub dropped: usize,
}

/// REJECTED events mailed per hour, at most: anyone can make them (an unsigned upload to a
/// distribution that does not exist), so they must not fill the queue or the mailboxes.
pub const REJECTED_PER_HOUR: u32 = 60;

/// How many REJECTED events were mailed in the current hour.
#[derive(Debug, Default)]
pub struct RejectedLimit {
    hour: i64,
    used: u32,
}

impl RejectedLimit {
    /// Whether one more REJECTED event may be mailed now (and count it).
    fn take(&mut self, now: DateTime<Utc>) -> bool {
        let hour = now.timestamp() / 3600;
        if hour != self.hour {
            (self.hour, self.used) = (hour, 0);
        }
        self.used += 1;
        if self.used == REJECTED_PER_HOUR + 1 {
            tracing::warn!(
                "more than {REJECTED_PER_HOUR} REJECTED events this hour: the rest of the hour's are not mailed"
            );
        }
        self.used <= REJECTED_PER_HOUR
    }
}

/// Work out the mail of the events marked pending, and queue it: one transaction per batch,
/// which takes the marks. `sender: None` (no SMTP server configured) takes the marks and
/// queues nothing.
pub fn collect(
    inst: &Instance,
    sender: Option<&Sender>,
    now: DateTime<Utc>,
    rejected: &mut RejectedLimit,
) -> Result<Collected> {
    let mut done = Collected::default();
    loop {
        let marks: Vec<(u64, u32)> = {
            let tx = inst.store.read()?;
            match tx.open_table(MAIL_PENDING) {
                Ok(t) => t
                    .range::<(u64, u32)>(..)?
                    .take(COLLECT_BATCH)
                    .map(|i| i.map(|(k, _)| k.value()))
                    .collect::<std::result::Result<_, _>>()?,
                Err(redb::TableError::TableDoesNotExist(_)) => vec![],
                Err(e) => return Err(e.into()),
            }
        };
        if marks.is_empty() {
            return Ok(done);
        }
        // The configuration, read once per batch (outside the write transaction).
        let daemon = inst.daemon()?.map(|d| d.mail).unwrap_or_default();
        let repos: Vec<Repository> = inst.list()?;
        let subscriptions: Vec<Subscription> = inst.list()?;
        let users = auth::list_users(&inst.store)?;
        let subscribers: Vec<Subscriber> = subscriptions
            .iter()
            .map(|s| Subscriber {
                subscription: s,
                email: users.iter().find(|u| u.name == s.user).and_then(|u| u.email.as_ref()),
            })
            .collect();
        let tx = inst.store.write()?;
        {
            let mut pending = tx.open_table(MAIL_PENDING)?;
            let events = tx.open_table(EVENTS)?;
            let mut queue = tx.open_table(MAIL_QUEUE)?;
            let mut next = queue.last()?.map_or(0, |(k, _)| k.value() + 1);
            for mark in &marks {
                pending.remove(*mark)?;
                done.events += 1;
                let Some(sender) = sender else { continue };
                let Some(bytes) = events.get(*mark)? else { continue };
                let Ok(event) = store::decode::<Event>(&format!("event {mark:?}"), bytes.value()) else { continue };
                if event.kind == crate::events::EventType::Rejected && !rejected.take(now) {
                    done.dropped += 1;
                    continue;
                }
                let repo = event
                    .distribution
                    .parse::<crate::deb::Dist>()
                    .ok()
                    .and_then(|d| repos.iter().find(|r| r.identity == d.repo))
                    .map(|r| &r.mail);
                for to in recipients(&event, &daemon, &sender.host, repo, &subscribers) {
                    if queue.len()? >= QUEUE_MAX {
                        tracing::warn!(to = %to.to, event = %headline(&event), "the mail queue is full ({QUEUE_MAX}); this notification is dropped");
                        done.dropped += 1;
                        continue;
                    }
                    let message = match compose(&event, &to, sender) {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(to = %to.to, "cannot make the notification mail: {e}");
                            done.dropped += 1;
                            continue;
                        }
                    };
                    let q = Queued {
                        from: sender.from.email.clone(),
                        to: to.to.email.clone(),
                        reason: to.reason,
                        event: headline(&event),
                        message: String::from_utf8_lossy(&message.formatted()).into_owned(),
                        created: now,
                        attempts: 0,
                        next_try: now,
                        last_error: None,
                    };
                    queue.insert(next, store::encode(&q).as_slice())?;
                    next += 1;
                    done.queued += 1;
                }
            }
        }
        tx.commit()?;
    }
}

/// The SMTP settings of `serve --smtp`.
#[derive(Debug, Clone)]
pub struct SmtpOptions {
    /// `smtp://[user[:password]@]host[:port][?tls=required|opportunistic]` or `smtps://…`.
    pub url: String,
    /// A PEM file of a CA to trust for the server's certificate, besides the public roots.
    pub ca: Option<std::path::PathBuf>,
    /// The password, from a file (so it is not on a command line).
    pub password_file: Option<std::path::PathBuf>,
    /// The first retry's delay; each further one doubles it, up to 32 times it.
    pub retry: std::time::Duration,
}

/// Sends the queue over SMTP.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// `scheme://host:port`, for the log (never the credentials).
    pub server: String,
    pub retry: std::time::Duration,
    /// When the next queued mail is due, as the last scan saw it (`None`: scan).
    next_due: std::sync::Mutex<Option<DateTime<Utc>>>,
}

impl Mailer {
    pub fn new(o: &SmtpOptions, hello: &str) -> Result<Mailer> {
        use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
        use lettre::transport::smtp::extension::ClientId;
        let bad = |what: String| MailError::Config(what);
        let parsed = url::Url::parse(&o.url).map_err(|e| bad(format!("{} is not a URL: {e}", redact(&o.url))))?;
        let host = parsed.host_str().ok_or_else(|| bad("names no host".into()))?.to_owned();
        let tls = parsed.query_pairs().find(|(k, _)| k == "tls").map(|(_, v)| v.into_owned());
        let encrypted = parsed.scheme() == "smtps" || tls.as_deref() == Some("required");
        if (o.password_file.is_some() || parsed.password().is_some()) && !encrypted {
            return Err(bad(format!(
                "{}: a password is sent only over TLS; use smtps://, or smtp://…?tls=required (STARTTLS)",
                redact(&o.url)
            )));
        }
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::from_url(&o.url)
            .map_err(|e| bad(format!("{}: {e}", redact(&o.url))))?
            .hello_name(ClientId::Domain(hello.to_owned()))
            .timeout(Some(std::time::Duration::from_secs(60)));
        if let Some(ca) = &o.ca {
            let pem = std::fs::read(ca).map_err(|e| bad(format!("CA {}: {e}", ca.display())))?;
            let cert = Certificate::from_pem(&pem).map_err(|e| bad(format!("CA {}: {e}", ca.display())))?;
            let params = TlsParameters::builder(host.clone())
                .add_root_certificate(cert)
                .build()
                .map_err(|e| bad(format!("TLS: {e}")))?;
            b = b.tls(match (parsed.scheme(), tls.as_deref()) {
                ("smtps", _) => Tls::Wrapper(params),
                (_, Some("required")) => Tls::Required(params),
                (_, Some("opportunistic")) => Tls::Opportunistic(params),
                _ => return Err(bad("--smtp-ca needs TLS: smtps://, or smtp://…?tls=required".into())),
            });
        }
        if let Some(f) = &o.password_file {
            let pw = std::fs::read_to_string(f).map_err(|e| bad(format!("password file {}: {e}", f.display())))?;
            let user = percent_encoding::percent_decode_str(parsed.username()).decode_utf8_lossy().into_owned();
            if user.is_empty() {
                return Err(bad("a password file needs a user in the URL (smtp://user@host)".into()));
            }
            b = b.credentials(lettre::transport::smtp::authentication::Credentials::new(
                user,
                pw.trim_end_matches(['\n', '\r']).to_owned(),
            ));
        }
        let port = parsed.port().unwrap_or(if parsed.scheme() == "smtps" { 465 } else { 25 });
        Ok(Mailer {
            transport: b.build(),
            server: format!("{}://{host}:{port}", parsed.scheme()),
            retry: o.retry,
            next_due: std::sync::Mutex::new(None),
        })
    }

    /// New mail was queued: the next round scans the queue.
    pub fn wake(&self) {
        *self.next_due.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The delay before attempt `attempts + 1`.
    fn backoff(&self, attempts: u32) -> Duration {
        Duration::from_std(self.retry * 2u32.pow(attempts.min(5))).unwrap_or(Duration::minutes(30))
    }

    /// Send the mail that is due; an error from the server ends the round (the rest waits for
    /// the next one). At least once: each attempt is recorded, with its next time, before the
    /// mail goes out, so a crash in between sends it again later, never in a loop. The store's
    /// work runs beside the async workers (`block_in_place`).
    pub async fn send_due(&self, store: &Store, now: DateTime<Utc>) -> Result<Sent> {
        let mut sent = Sent::default();
        if self.next_due.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|t| t > now) {
            return Ok(sent);
        }
        let (due, next) = tokio::task::block_in_place(|| due_mail(store, now))?;
        *self.next_due.lock().unwrap_or_else(|p| p.into_inner()) = next;
        for (key, mut q) in due {
            q.attempts += 1;
            q.next_try = now + self.backoff(q.attempts);
            tokio::task::block_in_place(|| put_mail(store, key, Some(&q)))?;
            self.wake();
            let outcome = match lettre::address::Envelope::new(Some(q.from.clone()), vec![q.to.clone()]) {
                Ok(env) => self.transport.send_raw(&env, q.message.as_bytes()).await.map(|_| ()),
                Err(e) => {
                    tracing::warn!(to = %q.to, "notification mail has no valid envelope ({e}); dropped");
                    Ok(())
                }
            };
            match outcome {
                Ok(()) => {
                    tracing::info!(to = %q.to, reason = ?q.reason, event = %q.event, "notification mail sent");
                    tokio::task::block_in_place(|| put_mail(store, key, None))?;
                    sent.sent += 1;
                }
                Err(e) if now - q.created > GIVE_UP_AFTER => {
                    tracing::warn!(to = %q.to, event = %q.event, attempts = q.attempts, "notification mail undelivered for {} days: {e}; dropped", GIVE_UP_AFTER.num_days());
                    tokio::task::block_in_place(|| put_mail(store, key, None))?;
                    sent.expired += 1;
                    break;
                }
                Err(e) => {
                    // A refusal (5xx) may be the server's (a wrong password, a refused
                    // sender) as well as the address's: retried like the rest, until dropped.
                    if e.is_permanent() {
                        sent.refused += 1;
                    } else {
                        sent.deferred += 1;
                    }
                    q.last_error = Some(e.to_string());
                    tokio::task::block_in_place(|| put_mail(store, key, Some(&q)))?;
                    tracing::warn!(server = %self.server, to = %q.to, attempts = q.attempts, "cannot send notification mail now ({e}); retry at {}", q.next_try);
                    break;
                }
            }
        }
        Ok(sent)
    }
}

/// Queued mail due now, by key, and when the next of the others is due.
type Due = (Vec<(u64, Queued)>, Option<DateTime<Utc>>);

/// The queued mail due at `now` (at most [`SEND_BATCH`], oldest first), and when the next of
/// the others is due.
fn due_mail(store: &Store, now: DateTime<Utc>) -> Result<Due> {
    let tx = store.read()?;
    let t = match tx.open_table(MAIL_QUEUE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok((vec![], None)),
        Err(e) => return Err(e.into()),
    };
    let (mut due, mut next) = (Vec::new(), None::<DateTime<Utc>>);
    for i in t.iter()? {
        let (k, bytes) = i?;
        let q: Queued = store::decode(&format!("mail {}", k.value()), bytes.value())?;
        if q.next_try <= now && due.len() < SEND_BATCH {
            due.push((k.value(), q));
        } else {
            next = Some(next.map_or(q.next_try, |n| n.min(q.next_try)));
        }
    }
    Ok((due, next))
}

/// Replace (`Some`) or remove (`None`) queued mail `key`.
fn put_mail(store: &Store, key: u64, q: Option<&Queued>) -> Result<()> {
    let tx = store.write()?;
    {
        let mut t = tx.open_table(MAIL_QUEUE)?;
        match q {
            Some(q) => {
                t.insert(key, store::encode(q).as_slice())?;
            }
            None => {
                t.remove(key)?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}

/// What one round of [`Mailer::send_due`] did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sent {
    pub sent: u64,
    /// Attempts the server refused (5xx): retried until [`GIVE_UP_AFTER`].
    pub refused: u64,
    /// Dropped after [`GIVE_UP_AFTER`].
    pub expired: u64,
    /// Attempts that failed for now.
    pub deferred: u64,
}

impl Sent {
    /// By outcome, as `/metrics` counts them.
    pub fn outcomes(&self) -> [(&'static str, u64); 4] {
        [("sent", self.sent), ("refused", self.refused), ("expired", self.expired), ("deferred", self.deferred)]
    }
}

/// A URL without its password, for messages; one that does not parse is not repeated.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "the --smtp URL".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventType;

    fn event(changed_by: &str, maintainer: &str) -> Event {
        Event::new(EventType::Installed, "bookworm-test-unstable", "hello", "1.0-1~test12+1")
            .with("changed_by", changed_by)
            .with("maintainer", maintainer)
            .with("architecture", "source")
    }

    fn mb(s: &str) -> Mailbox {
        s.parse().expect("mailbox")
    }

    fn to(r: &[Recipient]) -> Vec<(String, Reason)> {
        r.iter().map(|r| (r.to.email.to_string(), r.reason)).collect()
    }

    #[test]
    fn recipients_follow_mini_buildds_rules() {
        let e = event("Up Loader <up@build.example>", "Main Tainer <maint@elsewhere.example>");
        let daemon = DaemonMail { notify: vec![mb("ops@build.example")], ..Default::default() };
        // No repository settings: Changed-By gets mail (when allowed), Maintainer does not.
        assert_eq!(
            to(&recipients(&e, &daemon, "build.example", None, &[])),
            [("ops@build.example".into(), Reason::Daemon), ("up@build.example".into(), Reason::ChangedBy)]
        );
        // The repository turns Changed-By off and Maintainer on; Maintainer is not at this host.
        let repo = RepositoryMail {
            notify: vec![mb("Repo <repo@x.example>")],
            notify_changed_by: false,
            notify_maintainer: true,
        };
        assert_eq!(
            to(&recipients(&e, &daemon, "build.example", Some(&repo), &[])),
            [("ops@build.example".into(), Reason::Daemon), ("repo@x.example".into(), Reason::Repository)]
        );
        // allow_emails_to lets the maintainer through.
        let open = DaemonMail { allow_emails_to: Some(".*".into()), ..daemon.clone() };
        assert_eq!(
            to(&recipients(&e, &open, "build.example", Some(&repo), &[]))[2],
            ("maint@elsewhere.example".into(), Reason::Maintainer)
        );
        // Subscribers: a matching source or distribution, or all; each address once; none
        // without an address, or at an address allow_emails_to does not match.
        let alice: Address = "alice@x.example".parse().unwrap();
        let mallory: Address = "victim@elsewhere.example".parse().unwrap();
        let subs = [
            Subscription { user: "alice".into(), source: "hello".into(), distribution: String::new() },
            Subscription { user: "alice".into(), source: String::new(), distribution: String::new() },
            Subscription { user: "bob".into(), source: "other".into(), distribution: String::new() },
            Subscription { user: "carol".into(), source: String::new(), distribution: "bookworm-test-stable".into() },
            Subscription { user: "dave".into(), source: "hello".into(), distribution: String::new() },
            Subscription { user: "mallory".into(), source: String::new(), distribution: String::new() },
        ];
        let bob: Address = "bob@x.example".parse().unwrap();
        let carol: Address = "carol@x.example".parse().unwrap();
        let s: Vec<Subscriber> = vec![
            Subscriber { subscription: &subs[0], email: Some(&alice) },
            Subscriber { subscription: &subs[1], email: Some(&alice) },
            Subscriber { subscription: &subs[2], email: Some(&bob) },
            Subscriber { subscription: &subs[3], email: Some(&carol) },
            Subscriber { subscription: &subs[4], email: None },
            Subscriber { subscription: &subs[5], email: Some(&mallory) },
        ];
        let x = DaemonMail { allow_emails_to: Some(".*@x\\.example".into()), ..Default::default() };
        assert_eq!(
            to(&recipients(&e, &x, "other.example", Some(&RepositoryMail::default()), &s)),
            [("alice@x.example".into(), Reason::Subscriber)]
        );
        // The default allows this host's addresses only.
        assert!(recipients(&e, &DaemonMail::default(), "other.example", None, &s).is_empty());
    }

    #[test]
    fn allow_emails_to_matches_the_whole_address_never_the_display_name() {
        let daemon = DaemonMail { allow_emails_to: Some(".*@build\\.example".into()), ..Default::default() };
        let repo = RepositoryMail { notify_changed_by: true, ..Default::default() };
        for smuggled in [
            "\"x@build.example\" <victim@anywhere.example>",
            "x@build.example <victim@anywhere.example>",
            "victim@build.example.evil.example",
            "Victim <victim@anywhere.example> (x@build.example)",
        ] {
            let e = event(smuggled, "");
            assert!(recipients(&e, &daemon, "h", Some(&repo), &[]).is_empty(), "{smuggled:?} was mailed");
        }
        let e = event("Up <UP@build.example>", "");
        assert_eq!(
            to(&recipients(&e, &daemon, "h", Some(&repo), &[])),
            [("UP@build.example".into(), Reason::ChangedBy)]
        );
        assert!(allows(&daemon, "h", &"a@build.example".parse().unwrap()));
        assert!(!allows(&daemon, "h", &"a@build.example.org".parse().unwrap()));
    }

    #[test]
    fn hostile_upload_addresses_never_make_headers() {
        let open = DaemonMail { allow_emails_to: Some(".*".into()), ..Default::default() };
        for hostile in [
            "x@y.example\r\nBcc: victim@z.example",
            "x@y.example\nBcc: victim@z.example",
            "Evil <x@y.example>, victim@z.example",
            "not an address",
            "",
        ] {
            let e = event(hostile, hostile);
            let repo = RepositoryMail { notify_changed_by: true, notify_maintainer: true, ..Default::default() };
            assert!(recipients(&e, &open, "h", Some(&repo), &[]).is_empty(), "{hostile:?} made a recipient");
        }
        // A hostile subject (an error detail from a build) stays on one header line.
        let e = event("Up <up@h.example>", "")
            .with("error", crate::events::problem(400, "Bad", "line one\r\nBcc: victim@z.example\nX-Evil: 1"));
        let sender = Sender {
            identity: "bb".into(),
            host: "h.example".into(),
            from: mb("buildbay@h.example"),
            url: "http://h.example:8066".into(),
        };
        let r = Recipient { to: mb("up@h.example"), reason: Reason::ChangedBy };
        let m = String::from_utf8(compose(&e, &r, &sender).unwrap().formatted()).unwrap();
        let headers = m.split("\r\n\r\n").next().unwrap();
        assert!(!headers.lines().any(|l| l.starts_with("Bcc") || l.starts_with("X-Evil")), "{headers}");
        assert!(m.contains("Content-Type: application/json"), "{m}");
        assert!(m.contains("hello_1.0-1~test12+1_INSTALLED.json"), "{m}");
    }

    #[test]
    fn a_password_goes_only_over_tls_and_never_into_messages() {
        let o = |url: &str, pw: bool| SmtpOptions {
            url: url.into(),
            ca: None,
            password_file: pw.then(|| "/nonexistent/pw".into()),
            retry: std::time::Duration::from_secs(1),
        };
        let err = |url: &str, pw: bool| Mailer::new(&o(url, pw), "h").err().map(|e| e.to_string()).unwrap_or_default();
        for (url, pw) in [("smtp://u@h", true), ("smtp://u@h?tls=opportunistic", true), ("smtp://u:secret@h:25", false)]
        {
            let e = err(url, pw);
            assert!(e.contains("only over TLS") && !e.contains("secret"), "{url}: {e}");
        }
        // Over TLS it gets as far as reading the file.
        assert!(err("smtp://u@h?tls=required", true).contains("/nonexistent/pw"));
        assert!(err("smtps://u@h", true).contains("/nonexistent/pw"));
        assert!(Mailer::new(&o("smtp://localhost", false), "h").is_ok());
        assert!(!err("smtp://u:secret@h:99999", false).contains("secret"));
    }

    #[test]
    fn default_allow_is_this_host_only() {
        let r = regex::Regex::new(&default_allow("build.example")).unwrap();
        assert!(r.is_match("A <a@build.example>"));
        assert!(!r.is_match("a@buildxexample"));
        assert!(redact("smtp://u:secret@h:25").contains("***") && !redact("smtp://u:secret@h:25").contains("secret"));
    }
}
