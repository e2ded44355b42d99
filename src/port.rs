//! Ports (mini-buildd's `port`): a no-change rebuild of an installed source package into other
//! distributions, or into its own (a rebuild).
//!
//! The version rules are pure ([`rebuild_version`], [`port_version`]), and so is the changelog
//! entry ([`changelog_with_entry`]). The source itself is unpacked, given its entry and packed
//! again by `nobody` in a scratch directory (`dpkg-source` runs on what an uploader wrote; root
//! never writes where `nobody` can, and reads back only regular files). The `.changes` is signed
//! with the instance's key and dropped into the daemon's own drop box, from where it goes
//! through the same checks, builds and events as any upload.

use crate::archive::Archive;
use crate::archive::scratch::Scratch;
use crate::deb::{Changes, Dist, PackageName, Version};
use crate::instance::Instance;
use std::path::Path;
use std::process::Command;

/// The name and address ports, rebuilds and keyring packages are made by (lintian takes the
/// `.invalid` domain as a domain; `localhost` is a bogus mail host to it).
pub fn maintainer(identity: &str) -> (String, String) {
    (format!("buildbay {identity}").trim().to_owned(), format!("buildbay@{identity}.invalid"))
}

/// Upload options a port carries when the caller gives none (mini-buildd's default).
pub const DEFAULT_OPTIONS: &str = "lintian-mode=ignore";
/// Most bytes of a source a port copies.
const MAX_SOURCE: u64 = 1 << 30;
/// Most bytes of a changelog or a `.changes` read back.
const MAX_TEXT: u64 = 4 << 20;
/// How long unpacking or packing may take.
const SECS: &str = "600";

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The request is wrong: final, with the reason.
    #[error("{0}")]
    Bad(String),
    /// The port could not be made now.
    #[error("the port could not be made: {0}; try again, or see the daemon's log")]
    Failed(String),
}

impl From<crate::archive::ArchiveError> for PortError {
    fn from(e: crate::archive::ArchiveError) -> PortError {
        if e.is_input() { PortError::Bad(e.to_string()) } else { PortError::Failed(e.to_string()) }
    }
}

/// What a port asks for.
#[derive(Debug, Clone)]
pub struct PortRequest {
    pub source: PackageName,
    pub from: Dist,
    pub to: Vec<Dist>,
    /// The version in `from` (default: whatever is there).
    pub version: Option<Version>,
    /// Upload options for the port's changelog entry (checked).
    pub options: Vec<String>,
}

/// One port made: its `.changes` is in the drop box.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ported {
    pub source: String,
    pub distribution: String,
    pub version: String,
    pub changes: String,
}

/// `+rebuilt<stamp>` appended, or in place of the rightmost one there is.
pub fn rebuild_version(v: &Version, stamp: &str) -> Result<Version, PortError> {
    let re = regex::Regex::new(r"\+rebuilt[0-9]{14}").map_err(|e| PortError::Failed(e.to_string()))?;
    let text = v.as_str();
    let new = match re.find_iter(text).last() {
        Some(m) => format!("{}+rebuilt{stamp}{}", &text[..m.start()], &text[m.end()..]),
        None => format!("{text}+rebuilt{stamp}"),
    };
    new.parse().map_err(|e| PortError::Bad(format!("the rebuild's version {new:?}: {e}")))
}

/// The rightmost match of the source suite's mandatory appendix replaced by the target's
/// default appendix, keeping the `+N` revision (`1.0-1~test12+4` → `1.0-1~test13+4`); without
/// a match, the default appendix appended.
pub fn port_version(v: &Version, from: &regex::Regex, to_default: &str) -> Result<Version, PortError> {
    let text = v.as_str();
    let plus = regex::Regex::new(r"\+[0-9]").map_err(|e| PortError::Failed(e.to_string()))?;
    // As mini-buildd (Python's finditer): the last match, which is an empty one at the end when
    // the pattern matches the empty string there (`.*`: an append).
    let at_end = from.find_at(text, text.len()).filter(|m| m.is_empty());
    let new = match at_end.or_else(|| from.find_iter(text).last()) {
        Some(m) => {
            let appendix = m.as_str();
            let to = match (plus.find_iter(appendix).last(), plus.find_iter(to_default).last()) {
                (Some(rev), Some(d)) => {
                    format!("{}{}{}", &to_default[..d.start()], rev.as_str(), &to_default[d.end()..])
                }
                _ => to_default.to_owned(),
            };
            format!("{}{to}{}", &text[..m.start()], &text[m.end()..])
        }
        None => format!("{text}{to_default}"),
    };
    new.parse().map_err(|e| PortError::Bad(format!("the port's version {new:?}: {e}")))
}

/// Upload options as the `port` call takes them (separated by `|`), each checked as an upload
/// option line would be.
pub fn parse_options(s: &str) -> Result<Vec<String>, PortError> {
    let options: Vec<String> = s.split('|').map(str::trim).filter(|o| !o.is_empty()).map(String::from).collect();
    for o in &options {
        if o.len() > 200 || o.chars().any(char::is_control) || !o.contains('=') {
            return Err(PortError::Bad(format!("upload option {o:?}: write key=value, at most 200 characters")));
        }
        crate::protocol::options::UploadOptions::parse(&format!("MINI_BUILDD_OPTION: {o}"))
            .map_err(|e| PortError::Bad(format!("upload option {o:?}: {e}")))?;
    }
    Ok(options)
}

/// The changelog with the port's entry on top.
fn changelog_with_entry(
    text: &str,
    job: &Job<'_>,
    maintainer: (String, String),
    date: &str,
) -> Result<String, PortError> {
    let mut cl = debian_changelog::ChangeLog::parse(text)
        .to_mut_result()
        .map_err(|e| PortError::Bad(format!("the source's debian/changelog does not parse: {e}")))?;
    let v: debversion::Version =
        job.version.as_str().parse().map_err(|e| PortError::Bad(format!("version {}: {e:?}", job.version)))?;
    let mut entry = cl
        .new_empty_entry()
        .package(job.source.to_string())
        .version(v)
        .distribution(job.to.to_string())
        .urgency(debian_changelog::Urgency::Low)
        .maintainer(maintainer)
        .datetime(date)
        .change_line(format!("* {}", job.why));
    for o in job.options {
        entry = entry.change_line(format!("* MINI_BUILDD_OPTION: {o}"));
    }
    entry.finish();
    Ok(cl.to_string())
}

/// Make the ports of `req`, one per target distribution, into `drop` (the daemon's own drop
/// box). Nothing is dropped for a target whose checks fail; the first failure is the answer.
pub fn port(
    inst: &Instance,
    archive: &Archive<'_>,
    drop: &Path,
    req: &PortRequest,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Ported>, PortError> {
    let from_ctx = archive.ctx(&req.from.repo)?;
    let (_, from_suite, from_cv) = from_ctx.check_dist(&req.from)?;
    let entry =
        archive.ls(&req.from.repo, &req.source)?.into_iter().find(|e| e.distribution == req.from).ok_or_else(|| {
            PortError::Bad(format!("{} is not in {}; `ls {}` lists where it is", req.source, req.from, req.source))
        })?;
    if let Some(v) = &req.version
        && *v != entry.version
    {
        return Err(PortError::Bad(format!("{} has {} {}, not {v}", req.from, req.source, entry.version)));
    }
    if req.to.is_empty() {
        return Err(PortError::Bad("no target distribution: give to_distributions".into()));
    }
    // Every target checked before anything is made.
    let mut plans = Vec::new();
    for to in &req.to {
        let to_default = target_appendix(archive, to)?;
        let version = if *to == req.from {
            rebuild_version(&entry.version, &now.format("%Y%m%d%H%M%S").to_string())?
        } else {
            let (from_re, _) = from_ctx.layout.appendix(from_suite, &req.from.repo, from_cv).map_err(bad)?;
            port_version(&entry.version, &from_re, &to_default)?
        };
        plans.push((to.clone(), version));
    }
    let dsc = archive.dsc_path(&req.from.repo, &req.source, &entry.version, &entry.component);
    let sha256 =
        crate::deb::Checksums::of_file(&dsc).map_err(|e| PortError::Failed(format!("{}: {e}", dsc.display())))?.sha256;
    let scratch = Scratch::new("port", MAX_SOURCE)?;
    let copy = scratch.copy_source(&dsc, "in")?;
    let mut done = Vec::new();
    for (to, version) in plans {
        let why = if to == req.from {
            format!("No-change rebuild by buildbay. Original .dsc's SHA256: {sha256}.")
        } else {
            format!("No-change port from {} by buildbay. Original .dsc's SHA256: {sha256}.", req.from)
        };
        let job =
            Job { source: &req.source, to: &to, version: &version, since: &entry.version, why, options: &req.options };
        done.push(make(inst, &scratch, &copy, &job, drop, now)?);
    }
    Ok(done)
}

/// One port to make from a source copied into a scratch directory.
pub struct Job<'a> {
    pub source: &'a PackageName,
    pub to: &'a Dist,
    pub version: &'a Version,
    /// The version the port's `.changes` lists changes since.
    pub since: &'a Version,
    /// The changelog entry's first line.
    pub why: String,
    pub options: &'a [String],
}

/// Unpack the copied `.dsc` as `nobody`, add the port's changelog entry, pack it again, sign
/// its `.changes` and drop everything into `drop`.
pub fn make(
    inst: &Instance,
    scratch: &Scratch,
    dsc: &Path,
    job: &Job<'_>,
    drop: &Path,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Ported, PortError> {
    let identity = inst.daemon().map_err(|e| PortError::Failed(e.to_string()))?.map(|d| d.identity.to_string());
    let maintainer = maintainer(&identity.unwrap_or_default());
    let key = inst.key().map_err(|e| PortError::Failed(e.to_string()))?;
    let text = as_nobody(scratch, UNPACK, &[&dsc.display().to_string()], None)?;
    // The entry goes on top of the version the .dsc is of, so that the .changes lists only it.
    let top = crate::deb::changelog::top_entry(&text)
        .map_err(|e| PortError::Bad(format!("the source's debian/changelog: {e}")))?;
    if top.version != *job.since || top.package != *job.source {
        return Err(PortError::Bad(format!(
            "the source's debian/changelog is of {} {}, not {} {}",
            top.package, top.version, job.source, job.since
        )));
    }
    let date = now.format("%a, %d %b %Y %H:%M:%S +0000").to_string();
    let new = changelog_with_entry(&text, job, maintainer, &date)?;
    let changes = as_nobody(scratch, PACK, &[job.since.as_str()], Some(new.as_bytes()))?;
    let parsed = Changes::parse(&changes).map_err(|e| PortError::Failed(format!("the port's .changes: {e}")))?;
    // What the archive key signs is exactly the port: its source, version and distribution,
    // source only, the new .dsc and the files it lists, and the changes of the entry just added.
    let dsc_name = format!("{}_{}.dsc", job.source, job.version.without_epoch());
    let arch = parsed.stanza.get("Architecture").unwrap_or_default().trim().to_owned();
    let options = crate::protocol::options::UploadOptions::parse(parsed.stanza.get("Changes").unwrap_or(""))
        .map_err(|e| PortError::Bad(format!("the port's changes: {e}")))?;
    let wanted = parse_options(&job.options.join("|"))?;
    let wanted = crate::protocol::options::UploadOptions::parse(
        &wanted.iter().map(|o| format!("MINI_BUILDD_OPTION: {o}\n")).collect::<String>(),
    )
    .map_err(|e| PortError::Bad(e.to_string()))?;
    let files_ok = parsed.files.iter().any(|f| f.name.as_str() == dsc_name)
        && parsed.files.iter().all(|f| f.name.as_str().starts_with(&format!("{}_", job.source)));
    if parsed.source != *job.source
        || parsed.version != *job.version
        || parsed.distribution != job.to.to_string()
        || arch != "source"
        || !files_ok
        || options != wanted
    {
        return Err(PortError::Bad(format!(
            "the port's .changes is not the port of {} {} to {} (source only, its own files and options)",
            job.source, job.version, job.to
        )));
    }
    let name = format!("{}_{}_source.changes", job.source, job.version.without_epoch());
    let signed = key.clearsign(changes.as_bytes()).map_err(|e| PortError::Failed(e.to_string()))?;
    drop_files(&scratch.tmp(), drop, &parsed, &name, &signed)?;
    tracing::info!(source = %job.source, to = %job.to, version = %job.version, "port dropped into incoming");
    Ok(Ported {
        source: job.source.to_string(),
        distribution: job.to.to_string(),
        version: job.version.to_string(),
        changes: name,
    })
}

/// Keyrings an external `.dsc` may be signed with, besides the configured AptKeys: Debian's and
/// Ubuntu's, where installed.
/// (Debian's uploading developers; not the maintainers' or non-uploading developers' keyrings.)
pub const DSC_KEYRINGS: [&str; 2] =
    ["/usr/share/keyrings/debian-keyring.gpg", "/usr/share/keyrings/ubuntu-archive-keyring.gpg"];
/// Most bytes of an external `.dsc`.
const MAX_DSC: u64 = 1 << 20;

/// What `port_ext` asks for.
#[derive(Debug, Clone)]
pub struct ExtRequest {
    /// An http or https URL of a `.dsc`.
    pub url: String,
    pub to: Vec<Dist>,
    pub allow_unauthenticated: bool,
    pub options: Vec<String>,
}

/// `port_ext`: fetch a `.dsc` and its files, verify the `.dsc`'s signature against the
/// configured AptKeys and Debian's and Ubuntu's keyrings (unless allowed unauthenticated), and
/// each file against the checksums it signed; then port it into each target with the target's
/// default appendix appended to its version (`1.2.3` → `1.2.3~test12+1`).
pub fn port_ext(
    inst: &Instance,
    archive: &Archive<'_>,
    drop: &Path,
    req: &ExtRequest,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Ported>, PortError> {
    let base = req
        .url
        .strip_suffix(".dsc")
        .filter(|_| req.url.starts_with("http://") || req.url.starts_with("https://"))
        .and_then(|u| u.rsplit_once('/'))
        .map(|(base, _)| base.to_owned())
        .ok_or_else(|| PortError::Bad(format!("{:?} is not an http or https URL of a .dsc", req.url)))?;
    if req.to.is_empty() {
        return Err(PortError::Bad("no target distribution: give distributions".into()));
    }
    let mut targets = Vec::new();
    for to in &req.to {
        targets.push((to.clone(), target_appendix(archive, to)?));
    }
    let raw = fetch(&req.url, MAX_DSC)?;
    let text =
        String::from_utf8(raw.clone()).map_err(|_| PortError::Bad(format!("{}: not a .dsc (not UTF-8)", req.url)))?;
    // Only what the signature covers is parsed.
    let signed = if req.allow_unauthenticated {
        crate::gpg::cleartext::text_of(&text)
            .map(|t| t.into_owned())
            .map_err(|e| PortError::Bad(format!("{}: {e}", req.url)))?
    } else {
        let certs = dsc_keyring(inst)?;
        // A key valid now, neither expired nor revoked, as for an upload.
        let verified = crate::gpg::verify_upload(&raw, &certs).map_err(|e| {
            PortError::Bad(format!(
                "{}: the .dsc's signature does not verify against the AptKeys or Debian's and Ubuntu's keyrings ({e}); \
                 add the signer as an AptKey, or allow it unauthenticated",
                req.url
            ))
        })?;
        tracing::info!(url = %req.url, signer = %verified.signer, "port_ext: .dsc signature verified");
        verified.payload
    };
    let dsc = crate::deb::Dsc::parse(&signed).map_err(|e| PortError::Bad(format!("{}: not a .dsc: {e}", req.url)))?;
    // The URL names what was signed: a server cannot pass off another signed source.
    if !req.url.ends_with(&format!("/{}", dsc.file_name())) {
        return Err(PortError::Bad(format!("{}: the signed .dsc is {}, not this file", req.url, dsc.file_name())));
    }
    let total = dsc.files.iter().try_fold(0u64, |sum, f| sum.checked_add(f.size)).filter(|t| *t <= MAX_SOURCE);
    if total.is_none() {
        return Err(PortError::Bad(format!("{}: its files are larger than {MAX_SOURCE} bytes", req.url)));
    }
    let scratch = Scratch::new("port-ext", MAX_SOURCE)?;
    let dsc_name: crate::deb::FileName = dsc.file_name().parse().map_err(bad)?;
    let copy = scratch.put("in", &dsc_name, &raw)?;
    for f in &dsc.files {
        let want =
            f.sha256.as_deref().ok_or_else(|| PortError::Bad(format!("{}: {} has no SHA256", req.url, f.name)))?;
        // One byte more than the .dsc says: a longer file is a mismatch, not a read error.
        let data = fetch(&format!("{base}/{}", f.name), f.size + 1)?;
        let sums = crate::deb::Checksums::of_bytes(&data);
        if sums.size != f.size || sums.sha256 != want {
            return Err(PortError::Bad(format!("{}: {} does not match the .dsc's size and SHA256", req.url, f.name)));
        }
        scratch.put("in", &f.name, &data)?;
    }
    let sha256 = crate::deb::Checksums::of_bytes(&raw).sha256;
    let mut done = Vec::new();
    for (to, appendix) in targets {
        let version: Version = format!("{}{appendix}", dsc.version)
            .parse()
            .map_err(|e| PortError::Bad(format!("the port's version: {e}")))?;
        let why = format!("External port from: {}. Original .dsc's SHA256: {sha256}.", req.url);
        let job =
            Job { source: &dsc.source, to: &to, version: &version, since: &dsc.version, why, options: &req.options };
        done.push(make(inst, &scratch, &copy, &job, drop, now)?);
    }
    Ok(done)
}

/// The keys an external `.dsc` may be signed with.
fn dsc_keyring(inst: &Instance) -> Result<Vec<sequoia_openpgp::Cert>, PortError> {
    let mut certs = Vec::new();
    for k in inst.list::<crate::config::AptKey>().map_err(|e| PortError::Failed(e.to_string()))? {
        certs.extend(crate::gpg::read_keyring(k.key.as_bytes()).unwrap_or_default());
    }
    for path in DSC_KEYRINGS {
        if let Ok(data) = std::fs::read(path) {
            certs.extend(crate::gpg::read_keyring(&data).unwrap_or_default());
        }
    }
    Ok(certs)
}

/// GET `url`, at most `limit` bytes (a redirect or two allowed; 60 s in all).
fn fetch(url: &str, limit: u64) -> Result<Vec<u8>, PortError> {
    let agent = crate::http::agent(std::time::Duration::from_secs(60), 3);
    let mut r = agent.get(url).call().map_err(|e| PortError::Bad(format!("{url}: cannot fetch it: {e}")))?;
    let status = r.status().as_u16();
    if status != 200 {
        return Err(PortError::Bad(format!("{url}: the server answered {status}")));
    }
    r.body_mut()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|e| PortError::Bad(format!("{url}: reading it (at most {limit} bytes): {e}")))
}

/// A port's target, checked (an uploadable suite of a known distribution, not a rollback): its
/// default version appendix.
pub fn target_appendix(archive: &Archive<'_>, to: &Dist) -> Result<String, PortError> {
    let ctx = archive.ctx(&to.repo)?;
    let (_, suite, cv) = ctx.check_dist(to)?;
    if to.rollback.is_some() || !suite.uploadable {
        return Err(PortError::Bad(format!("{to} is not uploadable: ports go to an uploadable suite")));
    }
    Ok(ctx.layout.appendix(suite, &to.repo, cv).map_err(bad)?.1)
}

/// What became of one template package (a keyring or test package) in one distribution.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub source: String,
    pub distribution: String,
    pub version: String,
    /// The final event's type (INSTALLED, FAILED, REJECTED), or why there was none.
    pub result: String,
    /// Where it migrated to, or why not.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub migration: Vec<String>,
}

/// Write a template source tree (`files`: path, content, executable) of `name` into the
/// scratch's root-owned `in` directory and pack it with `dpkg-source -b` (buildbay's own
/// template: no outside byte in it but checked names); returns its `.dsc`.
pub fn pack_template(
    scratch: &Scratch,
    name: &PackageName,
    version: &str,
    files: Vec<(String, Vec<u8>, bool)>,
) -> Result<std::path::PathBuf, PortError> {
    let failed = |e: &dyn std::fmt::Display| PortError::Failed(e.to_string());
    let work = scratch.root_dir("in")?;
    let tree = work.join(name.as_str());
    for (path, body, exec) in files {
        let p = tree.join(&path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| failed(&e))?;
        }
        std::fs::write(&p, body).map_err(|e| failed(&e))?;
        if exec {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).map_err(|e| failed(&e))?;
        }
    }
    let out = Command::new("dpkg-source")
        .args(["-b", name.as_str()])
        .current_dir(&work)
        .output()
        .map_err(|e| failed(&format!("dpkg-source: {e}")))?;
    if !out.status.success() {
        return Err(failed(&format!("dpkg-source -b: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(work.join(format!("{name}_{version}.dsc")))
}

/// The final event (INSTALLED, FAILED or REJECTED) of a port's upload, waited for up to
/// `wait`: its type, or that there was none.
pub fn wait_final(
    inst: &Instance,
    name: &PackageName,
    to: &Dist,
    version: &Version,
    wait: std::time::Duration,
) -> Result<String, PortError> {
    use crate::events::EventType;
    let start = std::time::Instant::now();
    let finals = [EventType::Installed, EventType::Failed, EventType::Rejected];
    loop {
        let events =
            crate::events::of_source(&inst.store, name.as_str(), 100).map_err(|e| PortError::Failed(e.to_string()))?;
        if let Some(e) = events
            .iter()
            .find(|e| e.version == version.as_str() && e.distribution == to.to_string() && finals.contains(&e.kind))
        {
            return Ok(e.kind.as_str().to_owned());
        }
        if start.elapsed() > wait {
            return Ok(format!("no final event within {} s; see the events", wait.as_secs()));
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

fn bad(e: impl std::fmt::Display) -> PortError {
    PortError::Bad(e.to_string())
}

/// `nobody`'s first step, in the scratch's `tmp`: unpack the copied `.dsc` (`$1`) into `tree`
/// (afresh for each target), print the changelog.
const UNPACK: &str = r#"rm -rf tree && dpkg-source -x "$1" tree >&2 && cat tree/debian/changelog"#;
/// `nobody`'s second step: the new changelog from standard input, pack the source again, print
/// its `.changes` (`$1`: the version the changes are since).
const PACK: &str = r#"cat > tree/debian/changelog.buildbay && mv -f tree/debian/changelog.buildbay tree/debian/changelog \
  && dpkg-source -b tree >&2 && cd tree && dpkg-genchanges -S -sa "-v$1""#;

/// Run a constant script as `nobody` in the scratch's `tmp`, its values as arguments; its
/// standard output (bounded), or why it failed.
fn as_nobody(scratch: &Scratch, script: &str, args: &[&str], input: Option<&[u8]>) -> Result<String, PortError> {
    use std::io::{Read, Write};
    let mut cmd = Command::new("timeout");
    cmd.args([SECS, "sh", "-c", script, "sh"]).args(args).current_dir(scratch.tmp());
    scratch.as_owner(&mut cmd);
    // Standard error into a file of root's (not a pipe, which would fill while stdout is read).
    let errors = scratch.root_dir("log").map_err(|e| PortError::Failed(e.to_string()))?.join("stderr");
    let err_file = std::fs::File::create(&errors).map_err(|e| PortError::Failed(e.to_string()))?;
    cmd.stdin(if input.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() })
        .stdout(std::process::Stdio::piped())
        .stderr(err_file);
    let mut child = cmd.spawn().map_err(|e| PortError::Failed(format!("dpkg-source: {e}")))?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(data).map_err(|e| PortError::Failed(e.to_string()))?;
    }
    let mut out = Vec::new();
    if let Some(o) = child.stdout.take() {
        o.take(MAX_TEXT + 1).read_to_end(&mut out).map_err(|e| PortError::Failed(e.to_string()))?;
    }
    if out.len() as u64 > MAX_TEXT {
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| PortError::Failed(e.to_string()))?;
    let mut err = Vec::new();
    if let Ok(f) = std::fs::File::open(&errors) {
        let _ = f.take(MAX_TEXT).read_to_end(&mut err);
    }
    if status.code() == Some(124) {
        return Err(PortError::Failed(format!("dpkg-source took longer than {SECS} s")));
    }
    if !status.success() && (out.len() as u64) <= MAX_TEXT {
        let tail: Vec<&str> = std::str::from_utf8(&err).unwrap_or_default().lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(PortError::Bad(format!("the source cannot be ported ({status}): {}", tail.join(" / "))));
    }
    if out.len() as u64 > MAX_TEXT {
        return Err(PortError::Bad(format!("the source's changelog or .changes is larger than {MAX_TEXT} bytes")));
    }
    String::from_utf8(out).map_err(|_| PortError::Bad("the source's changelog is not UTF-8".into()))
}

/// The port's files (regular files of `nobody`'s directory, never through a symlink), then its
/// signed `.changes`, into the drop box: each written under a dot name (which the scan skips)
/// and renamed, the `.changes` last.
fn drop_files(from: &Path, drop: &Path, changes: &Changes, name: &str, signed: &[u8]) -> Result<(), PortError> {
    let failed = |p: &Path| {
        let p = p.display().to_string();
        move |e: std::io::Error| PortError::Failed(format!("{p}: {e}"))
    };
    let put = |file: &str, data: &mut dyn std::io::Read| -> Result<(), PortError> {
        let tmp = drop.join(format!(".port-{}-{file}", crate::protocol::fresh_micros()));
        let mut f = std::fs::File::create(&tmp).map_err(failed(&tmp))?;
        std::io::copy(data, &mut f).map_err(failed(&tmp))?;
        f.sync_all().map_err(failed(&tmp))?;
        std::fs::rename(&tmp, drop.join(file)).map_err(failed(&tmp))
    };
    for f in &changes.files {
        let path = from.join(f.name.as_str());
        let (file, size) = crate::protocol::tar::open_regular(&path).map_err(failed(&path))?;
        use std::os::unix::fs::MetadataExt;
        let links = file.metadata().map_err(failed(&path))?.nlink();
        if links != 1 || size != f.size {
            return Err(PortError::Bad(format!("{}: not the file the port's .changes lists", f.name)));
        }
        use std::io::Read;
        put(f.name.as_str(), &mut file.take(f.size))?;
    }
    put(name, &mut &signed[..])?;
    std::fs::File::open(drop).and_then(|d| d.sync_all()).map_err(failed(drop))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn rebuilds_append_or_replace_their_stamp() {
        assert_eq!(rebuild_version(&v("1.2.3"), "20130215100453").unwrap(), v("1.2.3+rebuilt20130215100453"));
        assert_eq!(
            rebuild_version(&v("1.2.3+rebuilt20130215100453"), "20130217120517").unwrap(),
            v("1.2.3+rebuilt20130217120517")
        );
        assert_eq!(
            rebuild_version(&v("1:1.0-1~test12+1"), "20261206120000").unwrap(),
            v("1:1.0-1~test12+1+rebuilt20261206120000")
        );
    }

    #[test]
    fn ports_swap_the_appendix_and_keep_the_revision() {
        let re = |s: &str| regex::Regex::new(s).unwrap();
        let sid = re(r"~testSID\+[1-9]");
        assert_eq!(port_version(&v("1.2.3-1~testSID+1"), &sid, "~test70+1").unwrap(), v("1.2.3-1~test70+1"));
        assert_eq!(port_version(&v("1.2.3-1~testSID+4"), &sid, "~test70+1").unwrap(), v("1.2.3-1~test70+4"));
        assert_eq!(port_version(&v("1.2.3-1~testSID+4fud15"), &sid, "~test70+1").unwrap(), v("1.2.3-1~test70+4fud15"));
        let exp = re(r"~testSID\+0");
        assert_eq!(port_version(&v("1.2.3-1~testSID+0exp2"), &exp, "~test70+0").unwrap(), v("1.2.3-1~test70+0exp2"));
        assert_eq!(port_version(&v("1.2.3-1"), &re(".*"), "~port+1").unwrap(), v("1.2.3-1~port+1"));
        // No match: the default appended.
        assert_eq!(port_version(&v("1.2.3-1"), &sid, "~test70+1").unwrap(), v("1.2.3-1~test70+1"));
    }

    #[test]
    fn hostile_options_are_refused() {
        assert_eq!(parse_options("lintian-mode=ignore").unwrap(), ["lintian-mode=ignore"]);
        assert_eq!(parse_options(" lintian-mode=ignore | auto-ports=bookworm-test-stable ").unwrap().len(), 2);
        for bad in
            ["lintian-mode=ignore\n * MINI_BUILDD_OPTION: x=y", "nokey", "lintian-mode=sometimes", &"x".repeat(300)]
        {
            assert!(parse_options(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_entry_goes_on_top() {
        let text = "hello (1.0~test12+1) bookworm-test-unstable; urgency=medium\n\n  * Test.\n\n -- A B <a@example.org>  Mon, 01 Jan 2024 00:00:00 +0000\n";
        let req = PortRequest {
            source: "hello".parse().unwrap(),
            from: "bookworm-test-unstable".parse().unwrap(),
            to: vec![],
            version: None,
            options: vec!["lintian-mode=ignore".into()],
        };
        let to: Dist = "bookworm-test-unstable".parse().unwrap();
        let version = v("1.0~test12+1+rebuilt20261206120000");
        let job = Job {
            source: &req.source,
            to: &to,
            version: &version,
            since: &version,
            why: "No-change rebuild.".into(),
            options: &req.options,
        };
        let maintainer = maintainer("test");
        let new = changelog_with_entry(text, &job, maintainer, "Sun, 06 Dec 2026 12:00:00 +0000").unwrap();
        let top = crate::deb::changelog::top_entry(&new).unwrap();
        assert_eq!(top.version, v("1.0~test12+1+rebuilt20261206120000"), "{new}");
        assert_eq!(top.distributions, ["bookworm-test-unstable"]);
        assert!(top.changes.iter().any(|l| l.contains("MINI_BUILDD_OPTION: lintian-mode=ignore")), "{new}");
        assert!(new.ends_with(text), "the old entries stay: {new}");
    }
}
