//! The fast tier: everything that needs neither root nor the network (a fixture archive on
//! loopback stands in for deb.debian.org). `tests/run.sh fast` runs it as `nobody` in a network
//! namespace of its own, first, so that it fails fast; `tests/run.sh` then runs the heavy tier.

#[path = "../common/mod.rs"]
mod common;

mod api;
mod browser;
mod crash;
mod fuzz;
mod https;
mod import;
mod incoming;
mod jobs;
mod mail;
mod metrics;
mod mirror;
mod pipeline_crash;
mod ports;
mod remotes;
mod repo;
mod scale;
mod serve;
mod versions;
