#!/usr/bin/env bash
# Builds fio with its libiscsi ioengine (run as root). Debian's fio package is built
# without it, and that engine is the way to drive the iSCSI target from user space
# with fio's own verify, with no kernel initiator (open-iscsi, iscsid) involved.
#   scripts/build-fio-libiscsi.sh [DIR]   DIR defaults to target/fio-libiscsi/ of the repo
# Fetches Debian's own fio source (so the same version and patches as the package) through
# a deb-src entry, builds it with --enable-libiscsi and installs the binary as DIR/fio.
# Idempotent: when DIR/fio exists and lists the libiscsi engine it does nothing.
# The last line printed (stdout) is the path of the fio binary; the rest goes to stderr,
# and the noisy apt/configure/make output to DIR/build.log.
set -euo pipefail

BUILD_DEPS=(libiscsi-dev libaio-dev zlib1g-dev libnuma-dev flex bison pkg-config build-essential dpkg-dev)
SRC_LIST=/etc/apt/sources.list.d/xdpt-src.sources
SRC_LIST_TEXT='Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg'

log() { printf 'build-fio-libiscsi: %s\n' "$*" >&2; }
die() { printf 'build-fio-libiscsi: error: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
    die "must run as root (it installs Debian packages); try: sudo $0"
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$repo/target/fio-libiscsi}
mkdir -p "$out"
out=$(cd "$out" && pwd)
fio=$out/fio
buildlog=$out/build.log

# grep without -q: an early exit would SIGPIPE the writer and, under pipefail, fail the test.
has_engine() { [ -x "$fio" ] && "$fio" --enghelp 2>/dev/null | grep -w libiscsi >/dev/null; }

if has_engine; then
    log "present: $("$fio" --version)"
    printf '%s\n' "$fio"
    exit 0
fi

# One build at a time in this folder.
exec 9>"$out/.lock"
flock 9
if has_engine; then
    printf '%s\n' "$fio"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
: >"$buildlog"
# Any failing step below: show the end of the log, then one line that says what failed.
step=""
on_error() {
    local rc=$?
    tail -n 25 "$buildlog" >&2
    die "${step:-a step} failed (exit $rc); full log: $buildlog"
}
trap on_error ERR
run() { "$@" >>"$buildlog" 2>&1 </dev/null; }

step="writing $SRC_LIST"
if [ "$(cat "$SRC_LIST" 2>/dev/null)" != "$SRC_LIST_TEXT" ]; then
    log "adding the deb-src entry $SRC_LIST"
    printf '%s\n' "$SRC_LIST_TEXT" >"$SRC_LIST"
    need_update=1
fi

missing=()
for p in "${BUILD_DEPS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# apt-get update only when something is missing: source index or build dependencies.
if [ -n "${need_update:-}" ] || [ "${#missing[@]}" -gt 0 ] \
    || ! apt-cache showsrc fio 2>/dev/null | grep '^Package: fio' >/dev/null; then
    step="apt-get update"
    log "apt-get update"
    run apt-get update -qq
fi
if [ "${#missing[@]}" -gt 0 ]; then
    step="installing build dependencies"
    log "installing Debian packages: ${missing[*]}"
    run apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Debian's source of the candidate fio version, with its patches applied by dpkg-source.
step="apt-get source fio"
version=$(apt-cache showsrc fio | sed -n 's/^Version: //p' | sort -V | tail -n 1)
upstream=${version#*:}
upstream=${upstream%-*}
src=$out/src/fio-$upstream
if [ ! -f "$src/configure" ]; then
    log "fetching the source of fio $version"
    rm -rf "$out/src"
    mkdir -p "$out/src"
    # As root apt warns that the download is unsandboxed (user _apt); harmless here.
    (cd "$out/src" && run apt-get source -qq "fio=$version")
    [ -f "$src/configure" ] || die "apt-get source fio gave no $src/configure"
fi

step="configure --enable-libiscsi"
log "building fio $upstream with libiscsi in $src (about 20 s on 2 cores)"
(cd "$src" && run ./configure --enable-libiscsi)
grep -q '^#define CONFIG_LIBISCSI' "$src/config-host.h" \
    || die "fio's configure did not enable libiscsi (is libiscsi-dev installed?); see $buildlog"
step="make"
run make -C "$src" -j"$(nproc)"
step="installing $fio"
install -m 0755 "$src/fio" "$fio.tmp"
mv -f "$fio.tmp" "$fio"
trap - ERR

has_engine || die "$fio was built but --enghelp does not list libiscsi"
log "built: $("$fio" --version)"
printf '%s\n' "$fio"
