//! Debian version ordering agrees with `dpkg --compare-versions` on every pair of a tricky set.

use buildbay::deb::Version;
use std::process::Command;

const VERSIONS: &[&str] = &[
    "0",
    "0.0",
    "00",
    "1",
    "1.0",
    "1.00",
    "1.0-0",
    "1.0-1",
    "1.0-1+b1",
    "1.0-1.1",
    "1.0-10",
    "1.0-2",
    "1.0~rc1",
    "1.0~rc1-1",
    "1.0~~",
    "1.0~~a",
    "1.0~",
    "1.0a",
    "1.0+",
    "1.0.",
    "1.0-",
    "1.0-1~bpo12+1",
    "1.0-1~test12+1",
    "1.0-1~test12+2",
    "1.0-1~test12+10",
    "1.0-1~test12+0",
    "1.0-1~testSID+1",
    "1:0.1",
    "2:0",
    "1:1.0-1",
    "1.2.3",
    "1.2.10",
    "1.10",
    "1.9",
    "9.9",
    "10",
    "1.0+dfsg-1",
    "1.0+dfsg1-1",
    "1.0a1",
    "1.0A",
    "1.0-a",
    "1.0-A",
    "1.0.0",
    "1.0.0~",
    "2.0~beta1",
    "2.0~beta10",
    "2.0~beta2",
    "2.0-1ubuntu1",
    "3.0.0+git20240101.abc-1",
    "0.0.1~",
    "1.0-1+deb12u1",
    "1.0-1+b10",
    "1.0+nmu1",
];

fn dpkg_lt(a: &str, b: &str) -> bool {
    let out = Command::new("dpkg").args(["--compare-versions", a, "lt", b]).output().expect("dpkg runs");
    out.status.success()
}

fn dpkg_eq(a: &str, b: &str) -> bool {
    Command::new("dpkg").args(["--compare-versions", a, "eq", b]).output().expect("dpkg runs").status.success()
}

/// Our notion of a valid version is dpkg's.
#[test]
fn validity_matches_dpkg() {
    for v in VERSIONS.iter().chain(&["", "a1", "1.0 b", "1:", ":1", "1.0-", "1_0", "1.0/2", "-1", "1.0-1-1", "abc:1.0"])
    {
        let dpkg = Command::new("dpkg").args(["--validate-version", v]).output().expect("dpkg runs").status.success();
        assert_eq!(v.parse::<Version>().is_ok(), dpkg, "validity of {v:?}");
    }
}

#[test]
fn ordering_matches_dpkg() {
    let mut checked = 0;
    for (i, a) in VERSIONS.iter().enumerate() {
        for b in &VERSIONS[i + 1..] {
            let (Ok(va), Ok(vb)) = (a.parse::<Version>(), b.parse::<Version>()) else { continue };
            let ours = va.cmp(&vb);
            let theirs = if dpkg_lt(a, b) {
                std::cmp::Ordering::Less
            } else if dpkg_eq(a, b) {
                std::cmp::Ordering::Equal
            } else {
                std::cmp::Ordering::Greater
            };
            assert_eq!(ours, theirs, "{a} vs {b}");
            checked += 1;
        }
    }
    assert!(checked >= 200, "only {checked} vectors");
    eprintln!("{checked} version pairs agree with dpkg");
}
