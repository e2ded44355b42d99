//! Where a build's time goes. The relay (`builder-exec`) notes when each sbuild section header
//! passes through it (`+---+` / `| Title |` / `+---+`; the nspawn script prints the same ones)
//! in the build directory's `phases` file, one `<seconds since start>\t<title>` per line. At the
//! result, those sections are summed into the phases users compare builders by: setup (session
//! and apt setup), dependencies, build, post-build (lintian) and cleanup.

use std::io::Write;
use std::time::Instant;

/// The file in the build directory.
pub const FILE: &str = "phases";
const START: &str = "(start)";
const END: &str = "(end)";

/// The coarse phases, in order.
pub const NAMES: [&str; 5] = ["setup", "dependencies", "build", "post-build", "cleanup"];

/// The phase a section belongs to; `None`: it continues the phase before it.
fn phase_of(title: &str) -> Option<usize> {
    Some(match title {
        START | "Chroot Setup Commands" | "Update chroot" | "Fetch source files" | "Pre Build Commands" => 0,
        t if t.starts_with("Install ") && t.contains("dependencies") => 1,
        "Check architectures" | "Build environment" => 1,
        "Build" | "Starting Timed Build Commands" | "Post Build Chroot" => 2,
        "Post Build" | "Post Build Commands" | "lintian" | "Lintian" => 3,
        "Cleanup" | "Chroot Cleanup Commands" | "Summary" | END => 4,
        _ => return None,
    })
}

/// The title of a section header, given a line and the line before it: sbuild's boxed sections
/// (`+---+` over `| Title |`), and its `lintian` subsection (underlined with dashes).
pub fn header<'a>(previous: &'a str, line: &'a str) -> Option<&'a str> {
    // Of sbuild's subsections only lintian's moves the phase; the others are build output.
    if previous.eq_ignore_ascii_case("lintian") && line.len() == previous.len() && line.bytes().all(|b| b == b'-') {
        return Some(previous);
    }
    let rule = previous.starts_with("+--") || previous.starts_with("+==");
    let title = line.strip_prefix("| ")?.strip_suffix('|')?.trim();
    (rule && !title.is_empty()).then_some(title)
}

/// Watches the output for section headers and records them in the `phases` file.
pub struct Recorder {
    start: Instant,
    file: std::fs::File,
    previous: String,
    partial: Vec<u8>,
}

impl Recorder {
    pub fn create(path: &std::path::Path) -> std::io::Result<Recorder> {
        let mut r = Recorder {
            start: Instant::now(),
            file: std::fs::File::create(path)?,
            previous: String::new(),
            partial: Vec::new(),
        };
        r.mark(START)?;
        Ok(r)
    }

    fn mark(&mut self, title: &str) -> std::io::Result<()> {
        writeln!(self.file, "{:.3}\t{title}", self.start.elapsed().as_secs_f64())
    }

    /// Output as it passes (any chunking).
    pub fn feed(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        for &b in bytes {
            if b != b'\n' {
                // Header lines are short; a long line is never one, and need not be kept whole.
                if self.partial.len() < 200 {
                    self.partial.push(b);
                }
                continue;
            }
            let line = String::from_utf8_lossy(&self.partial).into_owned();
            self.partial.clear();
            if let Some(title) = header(&self.previous, &line).map(str::to_owned) {
                self.mark(&title)?;
            }
            self.previous = line;
        }
        Ok(())
    }

    pub fn finish(mut self) -> std::io::Result<()> {
        self.mark(END)?;
        self.file.sync_all()
    }
}

/// Seconds per coarse phase, from a `phases` file (phases that did not occur are left out).
pub fn summary(text: &str) -> Vec<(&'static str, f64)> {
    let marks: Vec<(f64, &str)> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter_map(|(t, title)| Some((t.parse().ok()?, title)))
        .collect();
    let mut sums = [None::<f64>; 5];
    let mut current = 0;
    for pair in marks.windows(2) {
        let ((t0, title), (t1, _)) = (pair[0], pair[1]);
        // Phases only move forward (a late header of an early kind is still the late phase).
        current = phase_of(title).map_or(current, |p| p.max(current));
        let s = sums[current].get_or_insert(0.0);
        *s += (t1 - t0).max(0.0);
    }
    NAMES.iter().zip(sums).filter_map(|(n, s)| s.map(|s| (*n, (s * 100.0).round() / 100.0))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_boxed_titles() {
        let rule = "+------------------------------------------------------------------------------+";
        assert_eq!(
            header(rule, "| Install package build dependencies                                           |"),
            Some("Install package build dependencies")
        );
        assert_eq!(
            header("+=====+", "| bbt 1.0 (amd64)     Sat, 21 Nov 2026 |"),
            Some("bbt 1.0 (amd64)     Sat, 21 Nov 2026")
        );
        assert_eq!(header("some text", "| Build |"), None);
        assert_eq!(header(rule, "|  |"), None);
        assert_eq!(header(rule, "Build"), None);
        // lintian's subsection, underlined with dashes; no other underlined line.
        assert_eq!(header("lintian", "-------"), Some("lintian"));
        assert_eq!(header("lintian", "----"), None);
        assert_eq!(header("Summary", "-------"), None);
        assert_eq!(header("", ""), None);
        assert_eq!(header(rule, &"-".repeat(rule.len())), None);
    }

    #[test]
    fn the_recorder_finds_headers_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let mut r = Recorder::create(&path).unwrap();
        let text = "noise\n+----+\n| Build |\n+----+\ndh binary\n+----+\n| Cleanup |\n+----+\n";
        for chunk in text.as_bytes().chunks(3) {
            r.feed(chunk).unwrap();
        }
        r.finish().unwrap();
        let titles: Vec<String> =
            std::fs::read_to_string(&path).unwrap().lines().map(|l| l.split_once('\t').unwrap().1.to_owned()).collect();
        assert_eq!(titles, [START, "Build", "Cleanup", END]);
    }

    #[test]
    fn sections_sum_into_phases() {
        let text = "0.000\t(start)\n0.250\tbbt 1.0 (amd64)\n1.000\tFetch source files\n1.200\tInstall package build dependencies\n\
                    3.900\tCheck architectures\n4.000\tBuild environment\n4.100\tBuild\n4.200\tdpkg-buildpackage\n6.500\tChanges\n\
                    6.700\tlintian\n9.600\tPost Build\n9.700\tCleanup\n10.000\tSummary\n10.100\t(end)\n";
        assert_eq!(
            summary(text),
            vec![("setup", 1.2), ("dependencies", 2.9), ("build", 2.6), ("post-build", 3.0), ("cleanup", 0.4)]
        );
        // A build that failed early: only the phases it reached.
        assert_eq!(
            summary("0\t(start)\n1.5\tInstall package build dependencies\n2\t(end)\n"),
            vec![("setup", 1.5), ("dependencies", 0.5)]
        );
        assert!(summary("").is_empty());
    }
}
