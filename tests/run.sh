#!/usr/bin/env bash
# Install what buildbay's build and tests need from Debian, then run the test suite.
#   tests/run.sh        install dependencies (when root) and run `cargo test`
#   tests/run.sh deps   only install the dependencies
set -euo pipefail
cd "$(dirname "$0")/.."

# Build: nettle-dev + libclang-dev for sequoia's crypto-nettle backend.
# Tests: dpkg-dev (dpkg-source, dpkg-genchanges), gnupg/gpgv, apt, curl, systemd (systemd-socket-activate).
PACKAGES=(build-essential pkg-config nettle-dev libclang-dev dpkg-dev gnupg gpgv apt xz-utils gzip curl systemd)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "tests/run.sh: missing Debian packages: ${missing[*]}; run as root (sudo) to install them" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The real mini-buildd client, to prove wire compatibility: Debian's mini-buildd-utils from
# bookworm-backports (only that package comes from backports; its dependencies from bookworm).
if ! dpkg-query -W -f='${Status}' mini-buildd-utils 2>/dev/null | grep -q 'install ok installed'; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "tests/run.sh: mini-buildd-utils (bookworm-backports) is missing; run as root to install it" >&2
        exit 1
    fi
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        cat > /etc/apt/sources.list.d/bookworm-backports.sources <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mini-buildd-utils/bookworm-backports
fi
[ "${1:-}" = deps ] && exit 0

exec cargo test --locked
