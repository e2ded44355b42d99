//! The running daemon: the instance plus what only exists while serving (the event bus, the
//! started/stopped switch, the login limiter, the maintenance lock).

use crate::auth::LoginLimiter;
use crate::events::Bus;
use crate::instance::Instance;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

pub struct Daemon {
    pub inst: Instance,
    running: AtomicBool,
    pub bus: Bus,
    pub limiter: LoginLimiter,
    /// Held by maintenance calls (`setup`); a second one gets 503.
    pub maintenance: Mutex<()>,
    /// The FTP port uploads go to (`incoming_url`, `dput_conf`).
    pub ftp_port: u16,
}

impl Daemon {
    pub fn new(inst: Instance, ftp_port: u16) -> Daemon {
        let active = inst.daemon().ok().flatten().is_some_and(|d| d.status.is_active());
        Daemon {
            inst,
            running: AtomicBool::new(active),
            bus: Bus::new(),
            limiter: LoginLimiter::new(),
            maintenance: Mutex::new(()),
            ftp_port,
        }
    }

    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    pub fn set_running(&self, on: bool) {
        self.running.store(on, Ordering::SeqCst);
    }

    /// mini-buildd's load: queued builds / slots, or -1 when stopped. No builders yet: 0.
    pub fn load(&self) -> f64 {
        if self.is_running() { 0.0 } else { -1.0 }
    }
}
