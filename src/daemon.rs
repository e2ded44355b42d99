//! The running daemon: the instance plus what only exists while serving (the event bus, the
//! started/stopped switch, the login limiter, the maintenance lock, the upload pipeline).

use crate::auth::LoginLimiter;
use crate::builder::Builder;
use crate::events::{Bus, Event};
use crate::incoming::Incoming;
use crate::instance::Instance;
use crate::packager::Packager;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

pub struct Daemon {
    pub inst: Instance,
    running: AtomicBool,
    pub bus: Bus,
    pub limiter: LoginLimiter,
    /// Held by maintenance calls (`setup`); a second one gets 503.
    pub maintenance: Mutex<()>,
    /// The FTP port uploads go to (`incoming_url`, `dput_conf`).
    pub ftp_port: u16,
    /// The HTTP port (for URLs in build requests).
    pub http_port: u16,
    /// The host name builders and uploaders reach this instance by.
    pub host: String,
    pub incoming: Incoming,
    wake: Mutex<mpsc::Sender<()>>,
    wake_rx: Mutex<Option<mpsc::Receiver<()>>>,
    /// Set once when serving starts (the runner is found asynchronously).
    pub builder: std::sync::OnceLock<Builder>,
    /// Wakes the builders: a build request was queued.
    pub build_wake: tokio::sync::Notify,
    /// How long an upload may wait in PACKAGING for its build results.
    pub packaging_deadline: chrono::Duration,
    /// How long a remote may take to answer a build request handed to it.
    pub remote_deadline: chrono::Duration,
    /// Days events are kept, and days finished uploads are kept (the jobs' settings).
    pub keep_events_days: u32,
    pub expire_builds_days: u32,
    /// Added to the clock the job schedule reads (tests: a run missed while the daemon was
    /// down); zero in production.
    pub jobs_clock_offset: chrono::Duration,
    /// Set when the dispatcher has work (a request queued, a result to send home).
    dispatch_wake: (Mutex<bool>, std::sync::Condvar),
    /// When the pipeline and the builders last finished a pass (the watchdog's heartbeats).
    pub heartbeats: Heartbeats,
    /// What `/metrics` counts.
    pub metrics: crate::metrics::Metrics,
    /// Notification mail is sent (`serve --smtp`).
    pub mail_on: bool,
    /// The FTP drop box offers FTPS (`incoming_url` and `dput_conf` say `ftps`).
    pub ftps: bool,
    /// Free bytes kept on the state directory's file system (`--disk-reserve`): FTP transfers
    /// and installs stop below it.
    pub disk_reserve: u64,
    /// The HKP keyserver `set_user_key` fetches a key id from (`--keyserver`); `None`: none.
    pub keyserver: Option<String>,
    /// The credential of local administration (`buildbay user …` while it runs), once serving.
    pub local_admin: std::sync::OnceLock<crate::auth::LocalAdmin>,
}

/// Seconds a loop may take for one round (a chroot upgrade, a large install) before the
/// watchdog counts it as hung.
pub const HEARTBEAT_GRACE: i64 = 20 * 60;

/// When each loop last got round: the watchdog is fed only while both do.
#[derive(Debug, Default)]
pub struct Heartbeats {
    pipeline: std::sync::atomic::AtomicI64,
    builders: std::sync::atomic::AtomicI64,
}

impl Heartbeats {
    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    pub fn pipeline(&self) {
        self.pipeline.store(Self::now(), Ordering::SeqCst);
    }

    pub fn builders(&self) {
        self.builders.store(Self::now(), Ordering::SeqCst);
    }

    /// Whether both loops got round within `within` seconds (a loop not started yet counts as
    /// alive for its first `within` seconds after `started`).
    pub fn alive(&self, started: i64, within: i64) -> bool {
        let now = Self::now();
        [&self.pipeline, &self.builders].iter().all(|h| {
            let t = h.load(Ordering::SeqCst);
            now - if t == 0 { started } else { t } <= within
        })
    }
}

impl Daemon {
    pub fn new(inst: Instance, http_port: u16, ftp_port: u16, host: String, incoming: Incoming) -> Daemon {
        let active = inst.daemon().ok().flatten().is_some_and(|d| d.status.is_active());
        let (tx, rx) = mpsc::channel();
        Daemon {
            inst,
            running: AtomicBool::new(active),
            bus: Bus::new(),
            limiter: LoginLimiter::new(),
            maintenance: Mutex::new(()),
            ftp_port,
            http_port,
            host,
            incoming,
            wake: Mutex::new(tx),
            wake_rx: Mutex::new(Some(rx)),
            builder: std::sync::OnceLock::new(),
            build_wake: tokio::sync::Notify::new(),
            packaging_deadline: chrono::Duration::hours(8),
            remote_deadline: chrono::Duration::hours(7),
            keep_events_days: 365,
            expire_builds_days: 5,
            jobs_clock_offset: chrono::Duration::zero(),
            dispatch_wake: (Mutex::new(false), std::sync::Condvar::new()),
            heartbeats: Heartbeats::default(),
            metrics: crate::metrics::Metrics::default(),
            mail_on: false,
            ftps: false,
            disk_reserve: 1 << 30,
            keyserver: None,
            local_admin: std::sync::OnceLock::new(),
        }
    }

    /// Set the keyserver `set_user_key` fetches key ids from.
    pub fn with_keyserver(mut self, keyserver: Option<String>) -> Daemon {
        self.keyserver = keyserver;
        self
    }

    /// Set the free disk kept on the state directory's file system.
    pub fn with_disk_reserve(mut self, bytes: u64) -> Daemon {
        self.disk_reserve = bytes;
        self
    }

    /// Say that the drop box offers FTPS.
    pub fn with_ftps(mut self, ftps: bool) -> Daemon {
        self.ftps = ftps;
        self
    }

    /// `ftps` or `ftp`: how uploaders reach the drop box.
    pub fn ftp_scheme(&self) -> &'static str {
        if self.ftps { "ftps" } else { "ftp" }
    }

    /// Say whether notification mail is sent (`status`, the account page).
    pub fn with_mail(mut self, on: bool) -> Daemon {
        self.mail_on = on;
        self
    }

    /// Set how long an upload may wait in PACKAGING.
    pub fn with_packaging_deadline(mut self, d: std::time::Duration) -> Daemon {
        self.packaging_deadline = chrono::Duration::from_std(d).unwrap_or(chrono::Duration::hours(8));
        self
    }

    /// Set how long events and finished uploads are kept.
    pub fn with_retention(mut self, keep_events_days: u32, expire_builds_days: u32) -> Daemon {
        self.keep_events_days = keep_events_days;
        self.expire_builds_days = expire_builds_days;
        self
    }

    /// Shift the clock the job schedule reads by `days` (tests only).
    pub fn with_jobs_clock_offset(mut self, days: i64) -> Daemon {
        self.jobs_clock_offset = chrono::Duration::days(days);
        self
    }

    pub fn with_remote_deadline(mut self, d: std::time::Duration) -> Daemon {
        self.remote_deadline = chrono::Duration::from_std(d).unwrap_or(chrono::Duration::hours(7));
        self
    }

    /// The dispatcher thread: hands queued build requests to this instance's builders or its
    /// remotes, and sends results of remotes' requests home (see [`crate::dispatch`]).
    pub fn run_dispatch(&self) {
        let mut dispatcher = crate::dispatch::Dispatcher::default();
        loop {
            if self.is_running() {
                let local = self.local_builders();
                let round = dispatcher.round(&self.packager(), &local, self.remote_deadline);
                self.publish(&round.events);
                if round.local {
                    self.build_wake.notify_one();
                }
                if !round.events.is_empty() {
                    self.wake();
                }
            }
            let (flag, cv) = &self.dispatch_wake;
            let woken = flag.lock().unwrap_or_else(|p| p.into_inner());
            let (mut woken, _) =
                cv.wait_timeout_while(woken, Duration::from_secs(5), |w| !*w).unwrap_or_else(|p| p.into_inner());
            *woken = false;
        }
    }

    /// The re-check thread: remotes armed to activate are checked again now and then.
    pub fn run_recheck(&self) {
        loop {
            std::thread::sleep(crate::dispatch::RECHECK_EVERY);
            if self.is_running() {
                crate::dispatch::recheck_remotes(&self.inst);
            }
        }
    }

    /// Have the dispatcher run a round now.
    pub fn wake_dispatch(&self) {
        let (flag, cv) = &self.dispatch_wake;
        *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_one();
    }

    /// What this instance's own builders offer a dispatch.
    fn local_builders(&self) -> crate::dispatch::Local {
        let queued = crate::packager::build_queue(&self.inst.store)
            .map(|q| q.iter().filter(|r| r.is_local()).count())
            .unwrap_or(0);
        let mut chroots: Vec<String> = self
            .inst
            .list::<crate::chroot::Chroot>()
            .unwrap_or_default()
            .iter()
            .filter(|c| c.status.is_active())
            .map(crate::chroot::Chroot::id)
            .collect();
        chroots.extend(self.chroots_preparing());
        crate::dispatch::Local {
            slots: self.builder.get().map_or(0, |b| b.limits.slots),
            load: self.load(queued),
            chroots,
            building: crate::builder::jobs(&self.inst.store)
                .map(|j| j.into_iter().map(|j| j.bkey.to_string()).collect())
                .unwrap_or_default(),
        }
    }

    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    pub fn set_running(&self, on: bool) {
        self.running.store(on, Ordering::SeqCst);
        self.wake();
    }

    /// mini-buildd's load: `queued` builds per slot, or -1 when stopped.
    pub fn load(&self, queued: usize) -> f64 {
        match (self.is_running(), self.builder.get()) {
            (false, _) => -1.0,
            (true, Some(b)) => queued as f64 / b.limits.slots.max(1) as f64,
            (true, None) => 0.0,
        }
    }

    /// The builders, as a task: start queued requests, watch running builds, deliver results.
    /// Every step is recorded in redb, so a restarted daemon picks up where this one was.
    pub async fn run_builders(self: std::sync::Arc<Self>) {
        let Some(builder) = self.builder.get() else { return };
        loop {
            self.heartbeats.builders();
            let mut busy = false;
            if self.is_running() {
                match builder.pass(&self.inst).await {
                    Ok(pass) => {
                        self.publish(&pass.events);
                        if pass.delivered {
                            self.wake();
                        }
                        busy = pass.running > 0;
                    }
                    Err(e) => tracing::error!("builder pass failed (it is retried): {e}"),
                }
            }
            // Running builds are watched closely; otherwise a queued request wakes us.
            let idle = Duration::from_millis(if busy { 200 } else { 5000 });
            tokio::select! {
                _ = self.build_wake.notified() => {}
                _ = tokio::time::sleep(idle) => {}
            }
        }
    }

    /// The chroot upkeep (the job `cronjob_chroot_upkeep`, on a blocking thread): the check of
    /// each active chroot, and of each whose check failed while it was active (apt-get update
    /// and dist-upgrade in its image). It runs only while no build runs, and none can start (the
    /// builder's turn is held); otherwise it is postponed. A failed check deactivates the chroot
    /// with the reason, and its builds wait until a check passes (this job's next run, or PCA).
    pub fn chroot_upkeep(&self) -> Result<crate::jobs::Outcome, String> {
        use crate::jobs::Outcome;
        let Some(builder) = self.builder.get() else { return Ok(Outcome::Done("this instance builds nothing".into())) };
        let _turn = builder.turn.blocking_lock();
        let Ok(_maintenance) = self.maintenance.try_lock() else {
            return Ok(Outcome::Postponed("a maintenance call (setup, remake_chroots) is running".into()));
        };
        // Builds that may still use an image: running, or built with their unit still running
        // its after step (no result yet). Finished ones waiting for the packager do not.
        let building = crate::builder::jobs(&self.inst.store)
            .map_err(|e| e.to_string())?
            .iter()
            .filter(|j| j.state != crate::builder::JobState::Finished || !j.dir.join(crate::builder::RESULT).exists())
            .count();
        if building > 0 {
            return Ok(Outcome::Postponed(format!("{building} builds are running")));
        }
        let places = self.places();
        let due: Vec<String> = self
            .inst
            .list::<crate::chroot::Chroot>()
            .map_err(|e| e.to_string())?
            .iter()
            .filter(|c| c.status.is_active() || c.status.checked == crate::config::Checked::Reactivate)
            .map(crate::chroot::Chroot::id)
            .collect();
        let (mut upgraded, mut failed) = (Vec::new(), Vec::new());
        for id in &due {
            // The builders wait meanwhile; their heartbeat is fed so the watchdog does not
            // take a long upgrade for a hung daemon.
            let done = std::sync::atomic::AtomicBool::new(false);
            let c = std::thread::scope(|s| {
                s.spawn(|| {
                    while !done.load(Ordering::SeqCst) {
                        self.heartbeats.builders();
                        std::thread::sleep(Duration::from_millis(500));
                    }
                });
                let c = self.inst.lifecycle(&places, crate::config::Kind::Chroot, id, crate::config::Action::Check);
                done.store(true, Ordering::SeqCst);
                c
            })
            .map_err(|e| format!("{id}: {e}"))?;
            match c.status().message.clone() {
                None => {
                    tracing::info!(chroot = %id, "upgraded the chroot image");
                    upgraded.push(id.clone());
                }
                Some(why) => {
                    tracing::warn!(chroot = %id, "upgrading the chroot image failed, so its builds wait until a check passes: {why}");
                    failed.push(format!("{id}: {why}"));
                }
            }
        }
        // The apt archive caches start afresh with the upgraded images (what they held is
        // older than the images now, or in them).
        if let Some(caches) = builder.apt_caches() {
            crate::builder::empty_caches(&caches);
        }
        let done = match upgraded.len() {
            0 if failed.is_empty() => "no chroot to upgrade".to_owned(),
            n => format!("{n} chroots upgraded ({})", upgraded.join(", ")),
        };
        if failed.is_empty() {
            Ok(Outcome::Done(done))
        } else {
            Err(format!("{done}; failed, their builds wait: {}", failed.join("; ")))
        }
    }

    /// Where chroots live (the builder's places, or the defaults before it started).
    pub fn places(&self) -> crate::chroot::Places {
        self.builder.get().map(|b| b.places.clone()).unwrap_or_default()
    }

    /// Wake the upload pipeline (a file landed, a result arrived, a retry was asked for).
    /// The chroots being made now (see [`Builder::preparing`]).
    pub fn chroots_preparing(&self) -> Vec<String> {
        self.builder
            .get()
            .and_then(|b| b.preparing.lock().ok().map(|p| p.iter().cloned().collect()))
            .unwrap_or_default()
    }

    /// Make a chroot (`codename:arch`) and activate it, as `setup --chroots` does (minutes, the
    /// first time), on a blocking thread; meanwhile its build requests wait, queued. For the
    /// embedded default's chroot on the first start.
    pub fn prepare_chroot_in_background(self: &std::sync::Arc<Self>, spec: String) {
        let Some(builder) = self.builder.get() else { return };
        if let Ok(mut p) = builder.preparing.lock() {
            p.insert(spec.clone());
        }
        tracing::info!(chroot = %spec, "making the chroot in the background (about a minute); uploads for it wait");
        let d = self.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let opts =
                crate::instance::SetupOptions { chroots: vec![spec.clone()], places: d.places(), ..Default::default() };
            let done = {
                let _maintenance = d.maintenance.lock();
                d.inst.setup(&opts)
            };
            match done {
                Ok(report) => {
                    for i in report.iter().filter(|i| i.kind == crate::config::kind::CHROOT) {
                        tracing::info!(chroot = %i.id, status = %i.status, why = i.message.as_deref().unwrap_or(""), secs = started.elapsed().as_secs(), "chroot made");
                    }
                }
                Err(e) => {
                    tracing::error!(chroot = %spec, "cannot make the chroot: {e}; add it with `buildbay api setup --chroots {spec}`")
                }
            }
            if let Some(b) = d.builder.get()
                && let Ok(mut p) = b.preparing.lock()
            {
                p.remove(&spec);
            }
            d.build_wake.notify_one();
        });
    }

    pub fn wake(&self) {
        if let Ok(tx) = self.wake.lock() {
            let _ = tx.send(());
        }
    }

    /// Publish events that are already recorded.
    pub fn publish(&self, events: &[Event]) {
        for e in events {
            self.bus.publish(e);
        }
    }

    fn packager(&self) -> Packager<'_> {
        Packager {
            inst: &self.inst,
            incoming: &self.incoming,
            http_url: format!("http://{}:{}", self.host, self.http_port),
            ftp_url: format!("{}://{}:{}", self.ftp_scheme(), self.host, self.ftp_port),
            deadline: self.packaging_deadline,
            slots: self.builder.get().map_or(0, |b| b.limits.slots),
            disk_reserve: self.disk_reserve,
        }
    }

    /// The upload pipeline, on its own thread: claim complete uploads from incoming, then advance
    /// every pending upload. One step at a time, each ending in its own transaction, so that a
    /// crash anywhere resumes exactly where it was. Stopped (`stop` call): uploads wait.
    pub fn run_pipeline(&self) {
        let Some(rx) = self.wake_rx.lock().ok().and_then(|mut r| r.take()) else { return };
        loop {
            self.heartbeats.pipeline();
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            while rx.try_recv().is_ok() {}
            if !self.is_running() {
                continue;
            }
            self.pipeline_pass();
        }
    }

    /// One pass of the pipeline (also what tests and benchmarks drive).
    pub fn pipeline_pass(&self) {
        match self.incoming.scan(&self.inst.store, SystemTime::now()) {
            Ok(report) => self.publish(&report.events),
            Err(e) => tracing::error!("scanning incoming: {e}"),
        }
        let ids = match crate::packager::pending(&self.inst.store) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!("reading the upload queue: {e}");
                return;
            }
        };
        let packager = self.packager();
        let stepped = !ids.is_empty();
        for id in ids {
            // A bug in one step (a panic) fails that upload, not the pipeline.
            let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| packager.step(id)));
            let failure = match step {
                Ok(Ok(events)) => {
                    if events.iter().any(|e| e.kind == crate::events::EventType::Packaging) {
                        self.build_wake.notify_one();
                    }
                    self.publish(&events);
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(panic) => {
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".into());
                    format!("an internal error ({msg})")
                }
            };
            tracing::error!(upload = id, "packaging step failed (it is retried): {failure}");
            match packager.failed_attempt(id, &failure) {
                Ok(events) => self.publish(&events),
                Err(e) => tracing::error!(upload = id, "cannot record the failed step: {e}"),
            }
        }
        // What the steps queued (a remote's request too) or left to send home: the builder and
        // the dispatcher look at once.
        if stepped {
            self.build_wake.notify_one();
            self.wake_dispatch();
        }
        self.heartbeats.pipeline();
    }
}
