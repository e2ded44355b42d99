//! mini-buildd's `debmirror`: a partial mirror of a repository, made by Debian's debmirror from
//! this instance over HTTP, with the Release signatures checked against the archive key. The
//! command line and the destination are worked out here (pure, tested); the destination is
//! always below `<state>/debmirror/`, since debmirror replaces whatever is there.

use crate::deb::RepoId;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// mini-buildd's default (`~/debmirror/{}`), below the state directory.
pub const DEFAULT_DESTINATION: &str = "debmirror/{}";
/// The directory every mirror is below.
pub const MIRRORS: &str = "debmirror";
const PROGRAM: &str = "/usr/bin/debmirror";
/// How long one repository's mirror may take.
const TIMEOUT: Duration = Duration::from_secs(2 * 3600);
/// Lines of debmirror's output an answer quotes.
const TAIL: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The request is wrong (final).
    #[error("{0}")]
    Bad(String),
    /// debmirror failed (see its log), or is missing.
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Io(String),
}

/// Where a repository's mirror goes: `pattern` with `{}` as the repository, relative to the
/// state directory (or absolute, inside it), strictly below `<state>/debmirror/`, with no `..`.
pub fn destination(state: &Path, pattern: &str, repo: &RepoId) -> Result<PathBuf, MirrorError> {
    let bad = |why: &str| MirrorError::Bad(format!("destination {pattern:?}: {why}"));
    if pattern.len() > 256 || pattern.chars().any(|c| c.is_control()) {
        return Err(bad("at most 256 characters, one line"));
    }
    let replaced = PathBuf::from(pattern.replace("{}", repo.as_str()));
    let relative = match replaced.strip_prefix(state) {
        Ok(r) => r.to_owned(),
        Err(_) if replaced.is_absolute() => {
            return Err(bad(&format!("must be below {}", state.join(MIRRORS).display())));
        }
        Err(_) => replaced,
    };
    let mut parts = relative.components();
    if parts.next() != Some(Component::Normal(MIRRORS.as_ref())) {
        return Err(bad(&format!("must be below {}", state.join(MIRRORS).display())));
    }
    let rest: Vec<Component> = parts.collect();
    if rest.is_empty() || rest.iter().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(bad("must name a directory below debmirror/, without . or .."));
    }
    Ok(state.join(relative))
}

/// A comma-separated list of architectures or components, as debmirror takes it.
pub fn list(what: &str, values: &str) -> Result<String, MirrorError> {
    let items: Vec<&str> = values.split(',').map(str::trim).filter(|v| !v.is_empty()).collect();
    let ok = |v: &&str| {
        v.len() <= 64 && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-/".contains(&b))
    };
    if items.is_empty() || items.len() > 64 || !items.iter().all(ok) {
        return Err(MirrorError::Bad(format!(
            "{what}: a comma-separated list of names like amd64 or main, not {values:?}"
        )));
    }
    Ok(items.join(","))
}

/// How to mirror this instance.
#[derive(Clone)]
pub struct Mirror {
    pub state: PathBuf,
    /// `host:port` of this instance's HTTP.
    pub host: String,
    /// The archive key, as a binary keyring (gpgv's `--keyring`).
    pub keyring: Vec<u8>,
    pub architectures: String,
    pub components: String,
}

/// What one repository's mirror did.
#[derive(Debug, serde::Serialize)]
pub struct Mirrored {
    pub destination: String,
    pub dists: Vec<String>,
    pub seconds: f64,
    pub log: String,
    pub tail: Vec<String>,
}

impl Mirror {
    /// debmirror's command line (after the program).
    pub fn command(
        &self,
        repo: &RepoId,
        dists: &[String],
        dest: &Path,
        keyring: &Path,
    ) -> Result<Vec<OsString>, MirrorError> {
        let mut v: Vec<OsString> = ["--verbose", "--diff=none", "--getcontents", "--rsync-extra=none", "--method=http"]
            .iter()
            .map(OsString::from)
            .collect();
        v.push(format!("--host={}", self.host).into());
        v.push(format!("--root=/repositories/{repo}").into());
        v.push(format!("--dist={}", dists.join(",")).into());
        v.push(format!("--arch={}", list("architectures", &self.architectures)?).into());
        v.push(format!("--section={}", list("components", &self.components)?).into());
        let mut k = OsString::from("--keyring=");
        k.push(keyring);
        v.push(k);
        v.push(dest.into());
        Ok(v)
    }

    /// Mirror `dists` of `repo` into `pattern`'s destination; waits for debmirror.
    pub fn run(&self, repo: &RepoId, dists: &[String], pattern: &str) -> Result<Mirrored, MirrorError> {
        if dists.is_empty() {
            return Err(MirrorError::Bad(format!("nothing of repository {repo} is selected")));
        }
        let dest = destination(&self.state, pattern, repo)?;
        if !Path::new(PROGRAM).exists() {
            return Err(MirrorError::Failed("Debian's debmirror is not installed (apt-get install debmirror)".into()));
        }
        let io = |what: &Path, e: std::io::Error| MirrorError::Io(format!("{}: {e}", what.display()));
        std::fs::create_dir_all(&dest).map_err(|e| io(&dest, e))?;
        let var = self.state.join("var");
        std::fs::create_dir_all(&var).map_err(|e| io(&var, e))?;
        let keyring = var.join("debmirror-keyring.gpg");
        std::fs::write(&keyring, &self.keyring).map_err(|e| io(&keyring, e))?;
        let log_path = var.join(format!("debmirror-{repo}.log"));
        let log = std::fs::File::create(&log_path).map_err(|e| io(&log_path, e))?;
        let err = log.try_clone().map_err(|e| io(&log_path, e))?;
        let started = Instant::now();
        let mut child = std::process::Command::new(PROGRAM)
            .args(self.command(repo, dists, &dest, &keyring)?)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| MirrorError::Failed(format!("cannot run {PROGRAM}: {e}")))?;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if started.elapsed() > TIMEOUT => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(MirrorError::Failed(format!(
                        "debmirror ran longer than {} s and was stopped; see {}",
                        TIMEOUT.as_secs(),
                        log_path.display()
                    )));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(200)),
                Err(e) => return Err(MirrorError::Io(format!("waiting for debmirror: {e}"))),
            }
        };
        let tail = tail(&log_path);
        if !status.success() {
            return Err(MirrorError::Failed(format!(
                "debmirror failed ({status}): {}; its log: {}",
                tail.join(" | "),
                log_path.display()
            )));
        }
        Ok(Mirrored {
            destination: dest.display().to_string(),
            dists: dists.to_vec(),
            seconds: started.elapsed().as_secs_f64(),
            log: log_path.display().to_string(),
            tail,
        })
    }
}

/// The last lines of a log, read from its end (at most 64 KiB).
fn tail(path: &Path) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else { return vec![] };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 << 10)));
    let mut buf = Vec::new();
    let _ = f.take(64 << 10).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(TAIL)..].iter().map(|l| l.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_destination_stays_below_the_mirrors_directory() {
        let state = Path::new("/var/lib/buildbay");
        let repo: RepoId = "test".parse().unwrap();
        assert_eq!(destination(state, DEFAULT_DESTINATION, &repo).unwrap(), state.join("debmirror/test"));
        assert_eq!(
            destination(state, "/var/lib/buildbay/debmirror/pub/{}", &repo).unwrap(),
            state.join("debmirror/pub/test")
        );
        for bad in [
            "/",
            "/srv/mirror/{}",
            "debmirror",
            "debmirror/",
            "debmirror/../repositories",
            "repositories/{}",
            "../debmirror/{}",
            "/var/lib/buildbay/repositories/{}",
            "debmirror/{}\nx",
        ] {
            assert!(destination(state, bad, &repo).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_command_line_is_arguments_never_a_shell() {
        let m = Mirror {
            state: "/s".into(),
            host: "localhost:8066".into(),
            keyring: vec![],
            architectures: "amd64, i386".into(),
            components: "main,main/debian-installer".into(),
        };
        let repo: RepoId = "test".parse().unwrap();
        let cmd = m
            .command(&repo, &["bookworm-test-stable".into()], Path::new("/s/debmirror/test"), Path::new("/s/var/k.gpg"))
            .unwrap();
        let cmd: Vec<String> = cmd.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        for want in [
            "--host=localhost:8066",
            "--root=/repositories/test",
            "--dist=bookworm-test-stable",
            "--arch=amd64,i386",
            "--section=main,main/debian-installer",
            "--keyring=/s/var/k.gpg",
            "/s/debmirror/test",
        ] {
            assert!(cmd.iter().any(|a| a == want), "{want} missing in {cmd:?}");
        }
        assert!(!cmd.iter().any(|a| a.contains("ignore-release-gpg")));
        for hostile in ["amd64;rm -rf /", "$(id)", "main,../x", "", "AMD64"] {
            let m = Mirror { architectures: hostile.into(), ..m.clone() };
            assert!(m.command(&repo, &["d".into()], Path::new("/d"), Path::new("/k")).is_err(), "{hostile:?}");
        }
    }
}
