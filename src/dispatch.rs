//! Dispatch (mini-buildd §5.2, step 6, and the builder's uploader of §5.3): which builder
//! builds each queued request, this instance or a remote, and the trips over FTP between them.
//!
//! - A request of this instance's packager is handed to the builder with the lowest load among
//!   those that have its chroot (equal loads take turns). To a remote it goes by FTP to that
//!   remote's incoming, re-signed with the remote as its `Builder`; only once the upload worked
//!   is the hand-over recorded (so a crash in between sends it again, and the remote drops the
//!   duplicate). A remote that does not answer within the deadline loses it to another builder;
//!   its late result is refused, since the packager takes only the signature of the builder the
//!   request was last handed to.
//! - A remote's request this instance built leaves a result in FORWARDING: it is uploaded to the
//!   request's `Upload-To`, with a `.upload` marker beside it once that worked, and retried
//!   (sooner at first, then hourly, and at start) until it does.
//! - Remotes armed to activate once a check passes are checked again now and then.

use crate::events::Event;
use crate::incoming::{self, Upload, UploadState};
use crate::instance::Instance;
use crate::packager::{Packager, QueuedBuild, RequestFrom};
use crate::protocol::BuildRequest;
use crate::protocol::remote::{Builder, FtpUrl, RemoteStatus, order};
use crate::remote::{self, Part};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long a remote's `status` may take during a dispatch.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest a failed result upload waits before it is tried again.
const MAX_RETRY: i64 = 3600;
/// How often remotes armed to activate are checked again.
pub const RECHECK_EVERY: Duration = Duration::from_secs(60);
/// How often a dispatch may run an unreachable remote's wake command.
const WAKE_EVERY: Duration = Duration::from_secs(300);
/// How long after its wake command a remote's status is asked again.
const WAKE_SLEEP: Duration = Duration::from_secs(5);
/// How long a result may wait to be sent home before it is given up (FAILED).
const GIVE_UP_AFTER: i64 = 3 * 24 * 3600;

/// What this instance's own builders offer.
pub struct Local {
    pub slots: usize,
    pub load: f64,
    /// `codename:arch` of its active chroots, and of those being made now.
    pub chroots: Vec<String>,
    /// The build keys its builders have (running, or finished and not yet collected).
    pub building: std::collections::HashSet<String>,
}

/// The dispatcher's memory between rounds (nothing in it is needed after a restart).
#[derive(Default)]
pub struct Dispatcher {
    turn: usize,
    /// Requests whose wait for a busy or unreachable builder was logged.
    waiting: std::collections::BTreeSet<String>,
    /// The first round after a start retries every result upload at once.
    started: bool,
    /// When each remote's wake command last ran (at most once per [`WAKE_EVERY`]).
    woken: BTreeMap<String, std::time::Instant>,
}

/// What one round did.
#[derive(Default)]
pub struct Round {
    pub events: Vec<Event>,
    /// Something was handed to this instance's builders.
    pub local: bool,
}

impl Dispatcher {
    /// One round: hand out queued requests, send results home, re-check remotes armed to come
    /// back. Blocking (HTTP and FTP, each bounded by its timeouts).
    pub fn round(&mut self, packager: &Packager<'_>, local: &Local, deadline: chrono::Duration) -> Round {
        let inst = packager.inst;
        let mut round = Round::default();
        match self.hand_out(packager, local, deadline) {
            Ok(r) => round = r,
            Err(e) => tracing::error!("dispatching build requests failed (tried again): {e}"),
        }
        if let Err(e) = self.send_results(inst, packager) {
            tracing::error!("sending build results to remotes failed (tried again): {e}");
        }
        self.started = true;
        round
    }

    fn hand_out(
        &mut self,
        packager: &Packager<'_>,
        local: &Local,
        deadline: chrono::Duration,
    ) -> Result<Round, crate::packager::PackagerError> {
        let inst = packager.inst;
        let mut round = Round::default();
        let remotes = inst.active_remotes()?;
        let now = chrono::Utc::now();
        let active = |b: &Builder| match b {
            Builder::Local => true,
            Builder::Remote(u) => remotes.iter().any(|r| &r.http == u),
        };
        // Requests of this instance's packager that no builder has: not handed out yet, or
        // handed to a remote that is no longer active or did not answer within the deadline.
        let todo: Vec<QueuedBuild> = crate::packager::build_queue(&inst.store)?
            .into_iter()
            .filter(|q| q.from == RequestFrom::Here && !local.building.contains(&q.bkey.to_string()))
            .filter(|q| match &q.handed {
                None => !remotes.is_empty(),
                Some(h) => h.builder != Builder::Local && (!active(&h.builder) || now - h.at > deadline),
            })
            .collect();
        if todo.is_empty() {
            return Ok(round);
        }
        let own = inst.key()?.cert().fingerprint().to_hex();
        if remotes.is_empty() {
            // No remote any more: what went to one comes back here (or waits for a remote).
            for q in todo.iter().filter(|_| local.slots > 0) {
                crate::packager::record_handover(&inst.store, &q.bkey, q.handed.as_ref(), Builder::Local, own.clone())?;
                round.local = true;
            }
            return Ok(round);
        }
        // Each remote's status, once per round; one that does not answer and has a wake command
        // is woken (at most once per WAKE_EVERY: the command may take a while).
        let mut statuses: BTreeMap<String, Result<RemoteStatus, String>> = BTreeMap::new();
        for r in &remotes {
            let id = r.http.to_string();
            let mut status = remote::status(&r.http, STATUS_TIMEOUT);
            let may_wake = self.woken.get(&id).is_none_or(|t| t.elapsed() >= WAKE_EVERY);
            if matches!(status, Err(remote::RemoteError::Unreachable(_)))
                && !r.wake_command.trim().is_empty()
                && may_wake
            {
                self.woken.insert(id.clone(), std::time::Instant::now());
                tracing::info!(remote = %id, "the remote does not answer: running its wake command");
                status = remote::wake(&r.http, &r.wake_command, WAKE_SLEEP, 1);
            }
            statuses.insert(id, status.map_err(|e| e.to_string()));
        }
        let mut loads: BTreeMap<Builder, f64> = BTreeMap::new();
        loads.insert(Builder::Local, local.load);
        for r in &remotes {
            if let Some(Ok(s)) = statuses.get(&r.http.to_string()) {
                loads.insert(Builder::Remote(r.http.clone()), s.load);
            }
        }
        for q in todo {
            let chroot = format!("{}:{}", q.distribution.codename, q.bkey.arch);
            let mut candidates = Vec::new();
            if local.slots > 0 && local.chroots.contains(&chroot) {
                candidates.push((Builder::Local, loads.get(&Builder::Local).copied().unwrap_or(local.load)));
            }
            for r in &remotes {
                if let Some(Ok(s)) = statuses.get(&r.http.to_string())
                    && s.is_started()
                    && s.has_chroot(&q.distribution.codename, &q.bkey.arch)
                {
                    let b = Builder::Remote(r.http.clone());
                    let load = loads.get(&b).copied().unwrap_or(s.load);
                    candidates.push((b, load));
                }
            }
            if candidates.is_empty() {
                let someone_has = remotes.iter().any(|r| {
                    r.last_status.as_ref().is_some_and(|s| s.has_chroot(&q.distribution.codename, &q.bkey.arch))
                });
                if local.slots > 0 && !someone_has {
                    // Ours to fail with its own reason ("no chroot here; add it with …").
                    crate::packager::record_handover(
                        &inst.store,
                        &q.bkey,
                        q.handed.as_ref(),
                        Builder::Local,
                        own.clone(),
                    )?;
                    round.local = true;
                } else if someone_has {
                    if self.waiting.insert(q.bkey.to_string()) {
                        let why: Vec<String> = statuses
                            .iter()
                            .map(|(u, s)| format!("{u}: {}", s.as_ref().err().map_or("busy or stopped", |e| e)))
                            .collect();
                        tracing::info!(bkey = %q.bkey, "no builder with {chroot} takes it now; it waits ({})", why.join("; "));
                    }
                } else {
                    let why = format!(
                        "no builder has the chroot {chroot}: this instance {}, and none of its remotes ({}) lists it; add the chroot here or on a remote",
                        if local.slots == 0 { "builds nothing (--build-slots 0)" } else { "has no such chroot" },
                        remotes.iter().map(|r| r.http.to_string()).collect::<Vec<_>>().join(", ")
                    );
                    round.events.extend(packager.reject_packaging(q.upload, &why)?);
                }
                continue;
            }
            let ordered = order(candidates, self.turn);
            self.turn = self.turn.wrapping_add(1);
            for b in ordered {
                match &b {
                    Builder::Local => {
                        crate::packager::record_handover(&inst.store, &q.bkey, q.handed.as_ref(), b, own.clone())?;
                        *loads.entry(Builder::Local).or_default() += 1.0 / local.slots.max(1) as f64;
                        round.local = true;
                        break;
                    }
                    Builder::Remote(url) => {
                        let Some(Ok(status)) = statuses.get(&url.to_string()) else { continue };
                        let Some(r) = remotes.iter().find(|r| &r.http == url) else { continue };
                        match send_request(inst, &q, r, status) {
                            Ok(()) => {
                                let recorded = crate::packager::record_handover(
                                    &inst.store,
                                    &q.bkey,
                                    q.handed.as_ref(),
                                    b.clone(),
                                    r.key_fingerprint.clone(),
                                )?;
                                // Its load grows by one build (its slots are not known here).
                                *loads.entry(b.clone()).or_default() += 1.0;
                                self.waiting.remove(&q.bkey.to_string());
                                if recorded {
                                    tracing::info!(bkey = %q.bkey, builder = %url, "handed the build request to a remote");
                                } else {
                                    tracing::warn!(bkey = %q.bkey, builder = %url, "sent the build request, but another builder took it meanwhile; the remote's result will be refused");
                                }
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(bkey = %q.bkey, builder = %url, "cannot hand the request over (next builder): {e}")
                            }
                        }
                    }
                }
            }
        }
        Ok(round)
    }

    /// Upload this builder's results of remotes' requests to their `Upload-To`; one that could
    /// not be sent for [`GIVE_UP_AFTER`] ends FAILED (its packager's deadline ended it there).
    fn send_results(&self, inst: &Instance, packager: &Packager<'_>) -> Result<(), crate::store::StoreError> {
        let now = chrono::Utc::now();
        for id in crate::packager::pending(&inst.store)? {
            let Some(u) = incoming::get(&inst.store.read()?, id)? else { continue };
            if u.state != UploadState::Forwarding {
                continue;
            }
            let Some(to) = u.forward_to.clone() else { continue };
            // Backing off: 30 s, 1, 2, 4 … minutes, at most an hour; at once after a start.
            let wait = (30i64 << u.attempts.min(7)).min(MAX_RETRY);
            if self.started && u.packaging_since.is_some_and(|t| (now - t).num_seconds() < wait) {
                continue;
            }
            let dir = packager.incoming.spool_dir(u.id);
            let sent = send_result(&dir, &u, &to);
            let tx = inst.store.write()?;
            let Some(mut cur) = incoming::get_w(&tx, u.id)? else { continue };
            match sent {
                Ok(()) => {
                    cur.state = UploadState::Done;
                    cur.error = None;
                    tracing::info!(changes = %u.changes, to = %to, "sent the build result to its packager");
                }
                Err(e) if (now - u.received).num_seconds() > GIVE_UP_AFTER => {
                    cur.state = UploadState::Failed;
                    cur.error = Some(format!("could not be sent to {to} for {} days: {e}", GIVE_UP_AFTER / 86400));
                    tracing::error!(changes = %u.changes, to = %to, "gave up sending the build result: {e}");
                }
                Err(e) => {
                    cur.attempts += 1;
                    cur.packaging_since = Some(now);
                    cur.error = Some(e.to_string());
                    tracing::warn!(changes = %u.changes, to = %to, attempts = cur.attempts, "cannot send the build result (retried): {e}");
                }
            }
            incoming::put(&tx, &cur)?;
            tx.commit()?;
        }
        Ok(())
    }
}

/// Send a request to a remote builder: re-signed with it as the `Builder` (mini-buildd's
/// builder needs its own URL there), the tar first and the `.changes` last.
fn send_request(
    inst: &Instance,
    q: &QueuedBuild,
    remote: &crate::config::Remote,
    status: &RemoteStatus,
) -> Result<(), String> {
    let to: FtpUrl = status.incoming_url.parse()?;
    // Only to the remote's own host, whatever its status claims.
    if to.host != remote.http.host() {
        return Err(format!("its status names the incoming {to}, which is not on its host {}", remote.http.host()));
    }
    let own = [inst.key().map_err(|e| e.to_string())?.cert().clone()];
    let (mut req, _) = BuildRequest::read(&q.changes, &own).map_err(|e| format!("our own request: {e}"))?;
    req.builder = Some(remote.http.to_string());
    let signed = req.sign(inst.key().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let dir = q.changes.parent().ok_or("the request has no directory")?;
    let tar = req.tar_path(dir);
    let (tar_name, changes_name) = (BuildRequest::tar_name(&q.bkey), BuildRequest::changes_name(&q.bkey));
    remote::ftp_put(
        &to,
        &[Part::File { name: &tar_name, path: &tar }, Part::Bytes { name: &changes_name, data: &signed }],
    )
    .map_err(|e| e.to_string())
}

/// Send a result home: its files first, the `.changes` last; then a `.upload` marker beside it
/// holding where it went (mini-buildd's).
fn send_result(dir: &std::path::Path, u: &Upload, to: &FtpUrl) -> Result<(), String> {
    let marker = dir.join(format!("{}.upload", u.changes.as_str().trim_end_matches(".changes")));
    if marker.exists() {
        return Ok(());
    }
    let paths: Vec<(String, std::path::PathBuf)> = u
        .files
        .iter()
        .filter(|f| **f != u.changes)
        .chain(std::iter::once(&u.changes))
        .map(|f| (f.to_string(), dir.join(f.as_str())))
        .collect();
    let parts: Vec<Part<'_>> = paths.iter().map(|(n, p)| Part::File { name: n, path: p }).collect();
    remote::ftp_put(to, &parts).map_err(|e| e.to_string())?;
    crate::store::write_file_synced(&marker, format!("{to}\n").as_bytes()).map_err(|e| e.to_string())
}

/// Check again the remotes armed to come back once a check passes (the daemon's `recheck`
/// thread, every [`RECHECK_EVERY`]: a check can wait for a remote's timeouts).
pub fn recheck_remotes(inst: &Instance) {
    use crate::config::{Action, Checked, Kind};
    let Ok(all) = inst.list::<crate::config::Remote>() else { return };
    for r in all.into_iter().filter(|r| r.status.checked == Checked::Reactivate && !r.key.is_empty()) {
        let id = r.http.to_string();
        match inst.lifecycle(&Default::default(), Kind::Remote, &id, Action::Check) {
            Ok(o) if o.status().is_active() => tracing::info!(remote = %id, "the remote's check passed: active again"),
            Ok(o) => {
                tracing::debug!(remote = %id, why = o.status().message.as_deref().unwrap_or(""), "the remote is not back yet")
            }
            Err(e) => tracing::warn!(remote = %id, "cannot check the remote: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn backoff_is_bounded() {
        for attempts in [0u32, 1, 5, 7, 30, u32::MAX] {
            let wait = (30i64 << attempts.min(7)).min(super::MAX_RETRY);
            assert!((30..=super::MAX_RETRY).contains(&wait), "{attempts}: {wait}");
        }
    }
}
