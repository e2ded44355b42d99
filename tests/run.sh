#!/usr/bin/env bash
# Install what buildbay's build and tests need from Debian, then run the test suite.
#   tests/run.sh             install what is missing, then the fast tier, then the heavy tier
#   tests/run.sh fast        only the fast tier (unit tests and tests/fast: no root, no network)
#   tests/run.sh heavy       only the heavy tier (tests/heavy: builds, containers; root, Debian's archive)
#   tests/run.sh deps        only install the build and test dependencies
#   tests/run.sh build-deps  only install what building buildbay needs
#   tests/run.sh daemon-deps what building and running the daemon needs (README's first command)
# Installing uses sudo when not run as root. The fast tier runs as `nobody` in a network
# namespace of its own when run as root (so it proves it needs neither); the heavy tier as the
# caller.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        echo "tests/run.sh: need root to run: $*" >&2
        exit 1
    fi
}

# Build: nettle-dev + libclang-dev for sequoia's crypto-nettle backend; libsqlite3-dev for
# rusqlite (`buildbay import` reads a mini-buildd instance's config.sqlite).
BUILD=(build-essential pkg-config nettle-dev libclang-dev libsqlite3-dev)
# Tests: dpkg-dev (dpkg-source, dpkg-genchanges), gnupg/gpgv, apt, debian-archive-keyring (the
# keys setup's source checks verify Debian's InRelease with), xz/gzip, curl,
# systemd (systemd-socket-activate), dput and python3 (uploads over FTP).
# Builds (tests/heavy/builder.rs, as root): sbuild, schroot, and mmdebstrap for the chroot image;
# systemd-container (systemd-nspawn) boots the containers of tests/heavy/systemd_builds.rs and
# tests/heavy/appliance.rs, which also builds buildbay's own .deb (debhelper), checks it with lintian, and
# debootstraps the tree it installs it into.
# The browser test (tests/fast/browser.rs): Debian's chromium, driven by playwright-core from npm;
# devscripts for the debdiff call; python3-prometheus-client parses /metrics as Prometheus would;
# python3-aiosmtpd is the SMTP server of tests/fast/mail.rs, with openssl making its certificates;
# debmirror for the debmirror call (tests/fast/mirror.rs).
TEST=(dpkg-dev gnupg gpgv apt debian-archive-keyring xz-utils gzip curl systemd dput python3 sbuild schroot mmdebstrap systemd-container
      debhelper lintian debootstrap chromium devscripts python3-prometheus-client python3-aiosmtpd openssl debmirror)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

install_missing() {
    local missing=()
    for p in "$@"; do installed "$p" || missing+=("$p"); done
    if [ "${#missing[@]}" -gt 0 ]; then
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

# Running the daemon so that it builds (debian/control's Depends): sbuild and schroot, mmdebstrap
# for the chroot image it makes on its first start, systemd-nspawn for the default's builds.
# dose-distcheck: the migration gate checks installability with it; arch-test: mmdebstrap makes
# a foreign architecture's image (bookworm:i386 on amd64) only with it.
DAEMON=(systemd sbuild schroot mmdebstrap systemd-container ca-certificates debian-archive-keyring dose-distcheck arch-test)

install_missing "${BUILD[@]}"
[ "${1:-}" = build-deps ] && exit 0
install_missing "${DAEMON[@]}"
[ "${1:-}" = daemon-deps ] && exit 0
install_missing "${TEST[@]}"

# The real mini-buildd client, to prove wire compatibility: Debian's mini-buildd-utils from
# bookworm-backports (only that package comes from backports; its dependencies from bookworm).
if ! installed mini-buildd-utils; then
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' |
            as_root tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
    fi
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mini-buildd-utils/bookworm-backports
fi
# promtool, Prometheus's linter of /metrics (tests/fast/metrics.rs): unpacked from Debian's
# prometheus package, not installed (installing it would start a Prometheus server here).
PROMTOOL=/var/cache/buildbay-tests/promtool
if [ ! -x "$PROMTOOL" ]; then
    promtool_tmp=$(mktemp -d)
    (cd "$promtool_tmp" && as_root apt-get download -qq prometheus 2>/dev/null)
    dpkg-deb --fsys-tarfile "$promtool_tmp"/prometheus_*.deb | tar -x -C "$promtool_tmp" ./usr/bin/promtool
    as_root install -D -m 0755 "$promtool_tmp/usr/bin/promtool" "$PROMTOOL"
    rm -rf "$promtool_tmp"
fi
# Node for the browser test: any nodejs >= 18 with npm (Debian's, unless one is installed).
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    install_missing nodejs npm
fi
if [ ! -d tests/browser/node_modules/playwright-core ]; then
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi
[ "${1:-}" = deps ] && exit 0

# The fast tier: built as the caller, run without root and without network.
fast() {
    local started=$SECONDS
    local exes
    exes=$(cargo test --locked --no-run --lib --test fast --message-format=json |
        /usr/bin/python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])')
    [ -n "$exes" ] || { echo "tests/run.sh: no fast-tier test binaries were built" >&2; exit 1; }
    local exe
    if [ "$(id -u)" -eq 0 ]; then
        local home
        home=$(mktemp -d /tmp/buildbay-fast.XXXXXX)
        chown nobody:nogroup "$home"
        for exe in $exes; do
            echo "tests/run.sh: $(basename "$exe") as nobody, offline (a network namespace with loopback only)"
            unshare --net -- sh -c 'ip link set lo up && exec setpriv --reuid=nobody --regid=nogroup --clear-groups -- env HOME="$1" TMPDIR="$1" "$2"' \
                sh "$home" "$exe"
        done
        rm -rf "$home"
    else
        for exe in $exes; do
            if unshare -rn true 2>/dev/null; then
                unshare -rn -- sh -c 'ip link set lo up && exec "$1"' sh "$exe"
            else
                "$exe"
            fi
        done
    fi
    echo "tests/run.sh: the fast tier passed in $((SECONDS - started)) s"
}

# The heavy tier: one test at a time (they share the chroot image, the build slots, ports).
heavy() {
    local started=$SECONDS
    cargo test --locked --test heavy -- --test-threads=1
    echo "tests/run.sh: the heavy tier passed in $((SECONDS - started)) s"
}

case "${1:-}" in
    fast) fast ;;
    heavy) heavy ;;
    *) fast && heavy ;;
esac
