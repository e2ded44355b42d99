//! buildbay: a Debian package build daemon.

// Errors carry typed names (Dist, Version, …) for their messages; they are the cold path, so
// their size does not matter.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod archive;
pub mod auth;
pub mod builder;
pub mod chroot;
pub mod client;
pub mod config;
pub mod daemon;
pub mod deb;
pub mod dispatch;
pub mod events;
pub mod gate;
pub mod gpg;
pub mod helper;
pub mod http;
pub mod import;
pub mod incoming;
pub mod instance;
pub mod jobs;
pub mod keyring;
pub mod keyserver;
#[cfg(test)]
mod layering;
pub mod layout;
pub mod mail;
pub mod metrics;
pub mod mirror;
pub mod packager;
pub mod port;
pub mod protocol;
pub mod remote;
pub mod rootops;
pub mod serve;
pub mod sources;
pub mod store;
pub mod systemd;
pub mod test_packages;
pub mod web;
