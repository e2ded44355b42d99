//! The heavy tier: real builds as root with Debian's archive (one shared chroot image in
//! /var/lib/machines), the hostile suite, and the booted systemd containers (the daemon with its
//! root helper, the installed package). Its tests share the image, the host's build slots and
//! ports, so `tests/run.sh` runs them one at a time (`--test-threads=1`).

#[path = "../common/mod.rs"]
mod common;

mod appliance;
mod builder;
mod first_run;
mod hostile;
mod mini_buildd;
mod online;
mod qa;
mod remotes;
mod setup_spellings;
mod systemd_builds;
