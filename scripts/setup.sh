#!/usr/bin/env bash
# Installs what xdp-target needs on a fresh Debian machine (run as root).
#   scripts/setup.sh        base packages, the eBPF toolchain (Debian rustc-web, llvm-22,
#                           bpf-linker), cargo-fuzz, libiscsi's tools and a fio with the
#                           libiscsi engine (scripts/build-fio-libiscsi.sh), promtool (package
#                           prometheus; the metrics test checks the exposition with it), and
#                           rdma-core's verbs and RDMA CM libraries with their headers (NVMe/RDMA
#                           loads the libraries at run time; a test checks the layouts against
#                           the headers), and linux-perf (`cargo xtask bench --flamegraphs`)
#   scripts/setup.sh --lab  also what `cargo xtask lab` needs: QEMU, debootstrap, busybox
#                           for the guest image and its initrd
# Idempotent: every step checks first and does nothing when it is already there.
set -euo pipefail

BPF_LINKER_VERSION=0.13.0
APT_PACKAGES=(rustc-web cargo-web libstd-rust-web-dev-bpf llvm-22-dev iproute2 ethtool libiscsi-bin fonts-dejavu-core prometheus gcc libibverbs1 librdmacm1 ibverbs-providers libibverbs-dev librdmacm-dev linux-perf)
if [ "${1:-}" = "--lab" ]; then
    APT_PACKAGES+=(qemu-system-x86 debootstrap busybox-static e2fsprogs kmod xz-utils zstd cpio)
fi

log() { printf 'setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (it installs Debian packages); try: sudo $0"
    exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
    # Only promtool is wanted from the prometheus package: its server must not run here.
    if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
else
    log "Debian packages present"
fi

# bpf-linker must link against the same LLVM (22) that Debian's rustc-web uses.
# Without llvm-22's bin dir first in PATH, its build finds LLVM 14 and fails with
# "unable to find library -lLLVM".
want="bpf-linker v${BPF_LINKER_VERSION}"
if command -v bpf-linker >/dev/null 2>&1 && cargo install --list 2>/dev/null | grep -q "^${want}:"; then
    log "bpf-linker ${BPF_LINKER_VERSION} present"
else
    log "building bpf-linker ${BPF_LINKER_VERSION} against LLVM 22 (about 70 s)"
    PATH=/usr/lib/llvm-22/bin:$PATH cargo install "bpf-linker@${BPF_LINKER_VERSION}" \
        --locked --no-default-features --features llvm-22
fi
# cargo-fuzz runs the fuzz targets (cargo xtask fuzz) on the nightly toolchain.
if command -v cargo-fuzz >/dev/null 2>&1; then
    log "cargo-fuzz present"
else
    log "building cargo-fuzz (about 60 s)"
    cargo install cargo-fuzz --locked
fi
# fio with its libiscsi engine (Debian's fio lacks it), for the iSCSI tests and benchmarks.
bash "$(dirname "$0")/build-fio-libiscsi.sh" >/dev/null
log "done"
