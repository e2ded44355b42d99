//! From a finished build to its signed build result (mini-buildd §5.3): the tar (sbuild's
//! `.changes` and what it lists), the build log, then the result `.changes` last, into the
//! daemon's results directory.
//!
//! Everything in the build's `out/` was written by the build: it is sanitised first (only
//! regular files stay, mode 0644, without file capabilities) where no one but root reaches it,
//! then moved to where the daemon reads it, read without following any symlink, and bounded.

use super::{BuilderError, Ended, Job, Limits, io_err};
use crate::deb::Changes;
use crate::instance::Instance;
use crate::protocol::result::SBUILD_FIELDS;
use crate::protocol::{BuildRequest, BuildResult, Check, tar};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// Written by `cancel`, with who canceled.
pub const CANCELED: &str = "canceled";
/// Where results are made, under the results directory (names starting with '.' are not
/// claimed).
const WORK: &str = ".work";

/// The outcome of `deliver`.
pub struct Outcome {
    pub status: String,
    /// The checks that run after this result (ignore mode), each into its after log.
    pub after: Vec<crate::protocol::Check>,
}

/// The summary lines of an sbuild log (those after its last `Summary` section, where sbuild and
/// the nspawn script print them; what the build itself printed before does not count) that
/// become `X-Mini-Buildd-Sbuild-<Name>` fields. `end`: where the build's own output ends (see
/// [`super::BUILD_END`]); what checks appended after it is not read.
pub fn sbuild_fields(log: &Path, end: Option<u64>) -> Vec<(String, String)> {
    use std::io::Read;
    let Ok((f, _)) = tar::open_regular(log) else { return vec![] };
    summary_fields(std::io::BufReader::new(f.take(end.unwrap_or(u64::MAX))))
}

fn summary_fields(text: impl BufRead) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut previous = String::new();
    for line in text.split(b'\n').map_while(Result::ok) {
        let line = String::from_utf8_lossy(&line).into_owned();
        if super::phases::header(&previous, &line) == Some("Summary") {
            out.clear();
        }
        if let Some((k, v)) = line.split_once(": ")
            && SBUILD_FIELDS.contains(&k)
            && v.len() <= 256
        {
            out.retain(|(name, _)| name != k);
            out.push((k.to_owned(), v.trim().to_owned()));
        }
        previous = line;
    }
    out
}

/// Sanitise the output the build in `dir` wrote (in [`super::writing_out`]) and move it to
/// `<dir>/out`, where the daemon reads it. Done twice (the relay, then ExecStopPost), the
/// second finds nothing to do.
pub fn sanitise(dir: &Path) -> Result<(), BuilderError> {
    use std::os::unix::fs::PermissionsExt;
    let writing = super::writing_out(dir);
    match std::fs::symlink_metadata(&writing) {
        Ok(m) if m.file_type().is_dir() => {}
        Ok(_) => return std::fs::remove_file(&writing).map_err(io_err(&writing)),
        Err(_) => return Ok(()),
    }
    clean(&writing)?;
    std::fs::set_permissions(&writing, std::fs::Permissions::from_mode(0o755)).map_err(io_err(&writing))?;
    let out = dir.join(super::OUT);
    if std::fs::symlink_metadata(&out).is_ok() {
        std::fs::remove_dir_all(&out).or_else(|_| std::fs::remove_file(&out)).map_err(io_err(&out))?;
    }
    std::fs::rename(&writing, &out).map_err(io_err(&out))
}

/// Remove everything from `out` that is not a regular file, and make the files plain (0644, no
/// `security.capability`): nothing a build left there is a symlink, a device, setuid or
/// privileged when the host reads it.
pub(crate) fn clean(out: &Path) -> Result<(), BuilderError> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(rd) = std::fs::read_dir(out) else { return Ok(()) };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        if m.file_type().is_file() {
            // Through a handle opened without following anything: a swapped-in symlink is
            // never chmodded.
            match tar::open_regular(&p) {
                Ok((f, _)) => {
                    f.set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(io_err(&p))?;
                    drop_capabilities(&f).map_err(io_err(&p))?;
                }
                Err(_) => {
                    let _ = std::fs::remove_file(&p);
                }
            }
        } else if m.file_type().is_dir() {
            std::fs::remove_dir_all(&p).map_err(io_err(&p))?;
        } else {
            std::fs::remove_file(&p).map_err(io_err(&p))?;
        }
    }
    Ok(())
}

/// Remove a file's capabilities (chmod leaves them). Only a file that has some: removing the
/// attribute needs privileges even when there is none.
fn drop_capabilities(f: &std::fs::File) -> std::io::Result<()> {
    use xattr::FileExt;
    const CAPS: &str = "security.capability";
    if matches!(f.get_xattr(CAPS), Ok(None)) {
        return Ok(());
    }
    match f.remove_xattr(CAPS) {
        Err(e) if e.raw_os_error() == Some(nix::libc::ENODATA) => Ok(()),
        Err(e) if e.raw_os_error() == Some(nix::libc::EOPNOTSUPP) => Ok(()),
        other => other,
    }
}

/// The build's own `.changes` in `out`, by the name dpkg-genchanges gives it
/// (`<source>_<version>_<arch>.changes`; any other a build left is not looked at), written by
/// the build: bounded, a regular file.
fn built_changes(out: &Path, key: &crate::protocol::BuildKey) -> Option<(String, Changes)> {
    let name = format!("{}_{}_{}.changes", key.source(), key.version().without_epoch(), key.arch);
    let raw = crate::deb::changes::read_bounded(&out.join(&name)).ok()?;
    let changes = Changes::parse(&String::from_utf8(raw).ok()?).ok()?;
    Some((name, changes))
}

/// Make the signed result of a finished build and put it into `results`, and its build log into
/// `logs` (`<logs>/<bkey>/`, where the web serves it). `internal`: why the builder could not
/// run it. `checks_count`: the `checks` file holds verdicts the host wrote. The build's
/// directory is only read (it may be the helper's); the result is made in a directory of the
/// daemon's own under `results`.
#[allow(clippy::too_many_arguments)]
pub fn deliver(
    inst: &Instance,
    job: &Job,
    ended: &Ended,
    limits: &Limits,
    results: &Path,
    logs: &Path,
    internal: Option<String>,
    checks_count: bool,
) -> Result<Outcome, BuilderError> {
    let build_dir = &job.dir;
    let out = build_dir.join(super::OUT);
    if nix::unistd::geteuid().is_root() {
        sanitise(build_dir)?;
    }
    let key = &job.bkey;
    let dir = &results.join(WORK).join(job.unit.trim_end_matches(".service"));
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io_err(dir))?;
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let request = crate::deb::changes::read_bounded(&build_dir.join(super::backend::REQUEST))
        .ok()
        .and_then(|raw| BuildRequest::verify(&raw, &inst.remotes_keyring().ok()?).ok())
        .map(|(r, _)| r);
    let live = build_dir.join(super::LIVE_LOG);
    // An nspawn build's summary is the file its script wrote as machine root; sbuild's, the
    // lines sbuild printed last.
    let nspawn = request.as_ref().is_some_and(|r| r.backend == crate::protocol::Backend::Nspawn);
    let mut sbuild = if nspawn {
        let text = super::read_marker(&out.join(super::backend::nspawn::SUMMARY)).unwrap_or_default();
        let _ = std::fs::remove_file(out.join(super::backend::nspawn::SUMMARY));
        summary_fields(text.as_bytes())
    } else {
        // Only the host's record of where the build's output ended, when its checks count.
        let end = checks_count.then(|| super::read_marker(&build_dir.join(super::BUILD_END))).flatten();
        sbuild_fields(&live, end.and_then(|e| e.trim().parse().ok()))
    };
    // piuparts' and autopkgtest's verdicts come from the host alone (the `checks` file): what a
    // build, its dependencies' maintainer scripts or sbuild's log say of them does not count.
    sbuild.retain(|(k, _)| k != Check::Piuparts.field() && k != Check::Autopkgtest.field());
    // The checks' verdicts (or why they did not run), as the host wrote them; none when they
    // do not count (`checks_count`: their unit never ran, so a gating mode fails).
    let checks = if checks_count { super::read_marker(&build_dir.join(super::CHECKS)) } else { None };
    let checks = checks.unwrap_or_default();
    let checks = summary_fields(checks.as_bytes());
    let not_run: Vec<Check> = Check::ALL
        .into_iter()
        .filter(|c| checks.iter().any(|(k, v)| k == c.field() && v.starts_with("not run")))
        .collect();
    for (k, v) in checks {
        sbuild.retain(|(name, _)| *name != k);
        sbuild.push((k, v));
    }
    let status_of = |f: &[(String, String)]| f.iter().find(|(k, _)| k == "Status").map(|(_, v)| v.clone());
    let mut status = status_of(&sbuild).unwrap_or_else(|| "error".into());
    let mut internal = internal;
    if internal.is_none() {
        internal = ended.limit_reason(limits);
    }
    if internal.is_none() && ended.service_result == "lost" {
        internal = Some("the build unit ended without recording how (was the machine rebooted?)".into());
    }
    let canceled_by = super::read_marker(&build_dir.join(CANCELED)).map(|s| s.trim().to_owned());
    if canceled_by.is_some() {
        status = "canceled".into();
        internal = None;
    }

    // The tar: sbuild's .changes and its files, when the build got that far.
    let tar_name = BuildResult::tar_name(key);
    let tar_path = dir.join(&tar_name);
    let mut w =
        tar::Writer::create(&tar_path).map_err(|e| BuilderError::Request { bkey: key.clone(), why: e.to_string() })?;
    if let Some((name, changes)) = built_changes(&out, key).filter(|_| status == "successful") {
        let names = std::iter::once(name).chain(changes.files.iter().map(|f| f.name.to_string()));
        for n in names {
            if let Err(e) = w.add_file(&n, &out.join(&n)) {
                internal = Some(format!("the build's .changes lists {n}, which is not a regular file it built: {e}"));
                break;
            }
        }
    }
    let tar_ok = internal.is_none();
    w.finish().map_err(|e| BuilderError::Request { bkey: key.clone(), why: e.to_string() })?;
    if !tar_ok {
        // An empty tar: nothing of a suspicious output goes anywhere.
        let w = tar::Writer::create(&tar_path)
            .map_err(|e| BuilderError::Request { bkey: key.clone(), why: e.to_string() })?;
        w.finish().map_err(|e| BuilderError::Request { bkey: key.clone(), why: e.to_string() })?;
    }
    if let Some(why) = &internal {
        if status == "successful" {
            status = "error".into();
        }
        tracing::warn!(bkey = %key, "build error: {why}");
    }
    sbuild.retain(|(k, _)| k != "Status");
    sbuild.insert(0, ("Status".into(), status.clone()));

    // The build log: the live log, then what the builder has to add.
    let log_name = key.buildlog_name();
    let log_path = dir.join(&log_name);
    {
        let mut f = std::fs::File::create(&log_path).map_err(io_err(&log_path))?;
        if let Ok((mut from, _)) = tar::open_regular(&live) {
            std::io::copy(&mut from, &mut f).map_err(io_err(&log_path))?;
        }
        if let Some(why) = &internal {
            writeln!(f, "\nbuildbay: {why}").map_err(io_err(&log_path))?;
        }
        f.sync_all().map_err(io_err(&log_path))?;
    }
    let identity = inst.daemon().ok().flatten().map(|d| d.identity.to_string()).unwrap_or_default();
    let files = [log_name.as_str(), tar_name.as_str()]
        .iter()
        .map(|n| crate::protocol::request::file_entry(dir, n))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BuilderError::Request { bkey: key.clone(), why: e.to_string() })?;
    let result = BuildResult {
        key: key.clone(),
        distribution: job.distribution.clone(),
        builder: request.as_ref().and_then(|r| r.builder.clone()).unwrap_or(identity),
        sbuild,
        internal_error: internal,
        canceled_by,
        upload_to: request.as_ref().map(|r| r.upload_to.clone()),
        packager: request.as_ref().map(|r| r.packager.clone()),
        files,
    };
    let signed =
        result.sign(inst.key()?).map_err(|e| BuilderError::Request { bkey: key.clone(), why: e.to_string() })?;
    let changes_name = BuildResult::changes_name(key);
    let changes_path = dir.join(&changes_name);
    crate::store::write_file_synced(&changes_path, &signed).map_err(io_err(&changes_path))?;
    let kept = logs.join(key.rel_path());
    std::fs::create_dir_all(&kept).map_err(io_err(&kept))?;
    put(&log_path, &kept.join(&log_name))?;
    std::fs::create_dir_all(results).map_err(io_err(results))?;
    for name in [&tar_name, &log_name, &changes_name] {
        put(&dir.join(name), &results.join(name))?;
    }
    std::fs::remove_dir_all(dir).map_err(io_err(dir))?;
    let after = request
        .map(|r| {
            let ran = |c: crate::protocol::Check| c == crate::protocol::Check::Lintian || !not_run.contains(&c);
            [(Check::Lintian, r.lintian), (Check::Piuparts, r.piuparts), (Check::Autopkgtest, r.autopkgtest)]
                .into_iter()
                .filter(|(c, m)| *m == crate::protocol::QaMode::Ignore && ran(*c))
                .map(|(c, _)| c)
                .collect()
        })
        .unwrap_or_default();
    Ok(Outcome { status, after })
}

/// Put a file into place atomically (a hard link, or a copy renamed into place).
pub fn put(from: &Path, to: &Path) -> Result<(), BuilderError> {
    let _ = std::fs::remove_file(to);
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    let tmp: PathBuf = to.with_file_name(format!(".{}.tmp", to.file_name().unwrap_or_default().to_string_lossy()));
    std::fs::copy(from, &tmp).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, to).map_err(io_err(to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_summary_counts() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let rule = "+------------------------------------------------------------------------------+";
        let text = format!(
            "Status: successful\nLintian: pass\n{rule}\n| Summary{} |\n{rule}\nBuild-Time: 3\nStatus: failed\nSpace: 132\n",
            " ".repeat(69)
        );
        std::fs::write(&log, &text).unwrap();
        let f = sbuild_fields(&log, None);
        assert_eq!(
            f,
            vec![
                ("Build-Time".to_owned(), "3".to_owned()),
                ("Status".to_owned(), "failed".to_owned()),
                ("Space".to_owned(), "132".to_owned()),
            ],
            "the build's own 'Status: successful' before the summary does not count"
        );
        // A check's output after the build's end (a test printing a summary of its own).
        let forged =
            format!("{text}{rule}\n| Summary{} |\n{rule}\nStatus: successful\nLintian: pass\n", " ".repeat(69));
        std::fs::write(&log, forged).unwrap();
        assert!(sbuild_fields(&log, None).contains(&("Lintian".to_owned(), "pass".to_owned())));
        let bounded = sbuild_fields(&log, Some(text.len() as u64));
        assert_eq!(bounded, f, "only the build's own output counts");
    }

    #[test]
    fn sanitising_leaves_only_plain_regular_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let writing = crate::builder::writing_out(dir.path());
        std::fs::create_dir_all(&writing).unwrap();
        let out = writing.clone();
        std::fs::write(out.join("a.deb"), "x").unwrap();
        std::fs::set_permissions(out.join("a.deb"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", out.join("b.deb")).unwrap();
        std::fs::create_dir(out.join("sub")).unwrap();
        nix::unistd::mkfifo(&out.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        sanitise(dir.path()).unwrap();
        assert!(!writing.exists(), "moved");
        let out = dir.path().join("out");
        sanitise(dir.path()).unwrap();
        let left: Vec<String> =
            std::fs::read_dir(&out).unwrap().flatten().map(|e| e.file_name().into_string().unwrap()).collect();
        assert_eq!(left, ["a.deb"]);
        assert_eq!(std::fs::metadata(out.join("a.deb")).unwrap().permissions().mode() & 0o7777, 0o644);
    }
}
