//! The root operations a daemon that is not root asks the helper for (`buildbay helper`, see
//! the helper module), and the client that asks: start or stop a build, prepare, check or remove a
//! chroot. Nothing else: the verbs are fixed, their arguments typed, and the helper verifies a
//! build request's signature itself before it stages anything.
//!
//! One JSON request line, one JSON answer line, per connection on a Unix socket that only root
//! and the daemon's group may open.

use crate::config::Chroot;
use crate::protocol::{Backend, BuildKey};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// Where the packaged helper listens (`buildbay-helper.socket`).
pub const SOCKET: &str = "/run/buildbay/helper.sock";
/// Longest request or answer line.
pub const MAX_LINE: u64 = 64 * 1024;
/// How long a chroot operation may take (an image from scratch over a slow mirror).
pub const CHROOT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2 * 3600);
/// How long starting, stopping or removing a build may take.
pub const BUILD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// What a chroot operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChrootOp {
    Prepare,
    Check,
    Remove,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "verb", rename_all = "kebab-case")]
pub enum Request {
    /// Stage and start the build of a queued request: `request` is its path below the state
    /// directory (`spool/<id>/requests/<arch>/<name>.changes`), in slot `slot`.
    BuildStart {
        bkey: BuildKey,
        slot: usize,
        request: PathBuf,
        /// The build, or the checks of a build that succeeded (in a unit of their own).
        #[serde(default)]
        phase: crate::protocol::Phase,
    },
    /// Stop a build's unit (everything in it), noting who canceled it.
    BuildStop {
        bkey: BuildKey,
        canceled_by: Option<String>,
    },
    /// Remove the directory of a build whose unit has ended and whose result was delivered.
    BuildRemove {
        bkey: BuildKey,
    },
    Chroot {
        op: ChrootOp,
        chroot: Chroot,
    },
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "answer", rename_all = "kebab-case")]
pub enum Answer {
    Started {
        machine: Option<String>,
        backend: Backend,
        slot: usize,
        /// After it succeeds, its checks run in a unit of their own (ask again with
        /// `phase: Checks`).
        #[serde(default)]
        checks_unit: bool,
    },
    Done,
    /// The request is bad (final): `why`.
    Refused {
        why: String,
    },
    /// The request could not be done now (try again later): `why`.
    Failed {
        why: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RootOpsError {
    #[error("the buildbay helper at {socket} does not answer ({why}); is buildbay-helper.socket running?")]
    Unreachable { socket: String, why: String },
    #[error("the buildbay helper refused it: {0}")]
    Refused(String),
    #[error("the buildbay helper could not do it: {0}")]
    Failed(String),
}

/// The daemon's end.
#[derive(Debug, Clone)]
pub struct Client {
    pub socket: PathBuf,
}

impl Client {
    /// Ask the helper; blocks until it answers (a chroot image takes minutes).
    pub fn call(&self, req: &Request) -> Result<Answer, RootOpsError> {
        let unreachable = |why: String| RootOpsError::Unreachable { socket: self.socket.display().to_string(), why };
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket).map_err(|e| unreachable(e.to_string()))?;
        // Making a chroot image takes minutes; starting or stopping a build, seconds.
        let wait = match req {
            Request::Chroot { .. } => CHROOT_TIMEOUT,
            _ => BUILD_TIMEOUT,
        };
        s.set_read_timeout(Some(wait)).map_err(|e| unreachable(e.to_string()))?;
        s.set_write_timeout(Some(BUILD_TIMEOUT)).map_err(|e| unreachable(e.to_string()))?;
        let mut line = serde_json::to_vec(req).map_err(|e| unreachable(e.to_string()))?;
        line.push(b'\n');
        s.write_all(&line).map_err(|e| unreachable(e.to_string()))?;
        let answer = read_line(&s).map_err(|e| unreachable(e.to_string()))?;
        match serde_json::from_slice::<Answer>(&answer).map_err(|e| unreachable(format!("its answer: {e}")))? {
            Answer::Refused { why } => Err(RootOpsError::Refused(why)),
            Answer::Failed { why } => Err(RootOpsError::Failed(why)),
            a => Ok(a),
        }
    }
}

/// One line of at most [`MAX_LINE`] bytes.
pub fn read_line(s: &std::os::unix::net::UnixStream) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut r = std::io::BufReader::new(s.take(MAX_LINE + 1));
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.len() as u64 > MAX_LINE {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "the line is too long"));
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    Ok(line)
}

/// A request path below the state directory that the helper may open: relative, plain
/// segments, under `spool/`.
pub fn check_request_path(p: &Path) -> Result<(), String> {
    let mut parts = p.components();
    let first_ok = matches!(parts.next(), Some(std::path::Component::Normal(s)) if s == "spool");
    let rest_ok = p.components().skip(1).all(|c| match c {
        std::path::Component::Normal(s) => s.to_str().is_some_and(|s| !s.starts_with('.') && !s.is_empty()),
        _ => false,
    });
    if first_ok && rest_ok && p.components().count() >= 3 {
        Ok(())
    } else {
        Err(format!("{} is not a request below spool/", p.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_paths_stay_in_the_spool() {
        let r = Request::BuildStart {
            bkey: "hello/1.0/20261121-130030-234930/amd64".parse().unwrap(),
            slot: 1,
            request: "spool/1/requests/amd64/hello_1.0_mini-buildd-buildrequest_amd64.changes".into(),
            phase: crate::protocol::Phase::Checks,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"verb\":\"build-start\""), "{text}");
        assert!(matches!(serde_json::from_str::<Request>(&text).unwrap(), Request::BuildStart { slot: 1, .. }));
        assert!(
            serde_json::from_str::<Request>(
                r#"{"verb":"build-start","bkey":"../x/y/z","slot":0,"request":"spool/a/b"}"#
            )
            .is_err()
        );
        assert!(serde_json::from_str::<Request>(r#"{"verb":"exec","command":"id"}"#).is_err(), "no other verbs");
        assert!(check_request_path(Path::new("spool/1/requests/amd64/x.changes")).is_ok());
        for bad in ["/etc/shadow", "spool/../gnupg/archive-key.asc", "gnupg/archive-key.asc", "spool/.x/y", "spool"] {
            assert!(check_request_path(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
