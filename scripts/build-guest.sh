#!/usr/bin/env bash
# Build a tiny Linux guest for domsnap's VM tests, from Debian packages only.
#
# Usage: scripts/build-guest.sh OUTDIR
#
# Produces OUTDIR/vmlinuz (copied from linux-image-amd64) and
# OUTDIR/initramfs.cpio.gz (busybox-static + the virtio-blk modules + /init).
# Nothing built here is committed: it is assembled at setup time from the
# installed packages, and the script installs them when they are missing.
#
# The guest's /init prints "DOMSNAP-BOOT", then once per tick:
#     DOMSNAP-TICK n=<n> disk=<prev>
# where n is an in-memory counter (1, 2, 3, ... from boot) and prev is the
# counter read back from the first 512-byte block of /dev/vda (-1 when the
# block holds no counter). It then writes "<n>\n" (zero padded to 512 bytes)
# to that block of /dev/vda (and /dev/vdb when present). Without /dev/vda it
# prints "DOMSNAP-NODISK" once and ticks with disk=-1. The tick period is
# taken from the kernel command line "domsnap.tick=<seconds>" (default 1).
#
# For the benchmarks (bench/libvirt.py), two more options, both off by default:
# "domsnap.ticker=<seconds>" starts a second loop that prints "DOMSNAP-T <n>" at that
# period (no disk I/O, so its lines reach the host's console file at a steady rate:
# the largest gap between their arrivals shows how long the guest was stopped), and
# "domsnap.dirty=<MiB>" starts a loop that rewrites a file of that size in the
# guest's RAM (its rootfs) over and over at nice 19 (so the ticker still gets the
# vCPU when it wakes), so the guest keeps dirtying memory (it
# prints "DOMSNAP-DIRTY pass=<p>" after each of its first three passes).
#
# Idempotent: when OUTDIR already holds both outputs, newer than this script
# and built from the same kernel version, it exits at once.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi

SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
OUTDIR=$1
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)

# Modules the guest needs (dependencies are added from modules.dep).
WANTED_MODULES=(virtio virtio_ring virtio_pci virtio_blk)
PACKAGES=(linux-image-amd64 busybox-static cpio xz-utils kmod)

log() { echo "build-guest: $*" >&2; }
die() { echo "build-guest: error: $*" >&2; exit 1; }

# Newest kernel version that has both /lib/modules/<ver>/modules.dep and
# /boot/vmlinuz-<ver>. Prints nothing when there is none.
pick_kernel() {
    local d ver
    # shellcheck disable=SC2012
    for d in $(ls -1d /lib/modules/*/ 2>/dev/null | sort -rV); do
        ver=$(basename "$d")
        if [[ -f /boot/vmlinuz-$ver && -f /lib/modules/$ver/modules.dep ]]; then
            echo "$ver"
            return 0
        fi
    done
    return 0
}

pkg_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

ensure_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        pkg_installed "$p" || missing+=("$p")
    done
    # Any installed kernel with modules will do, even without the metapackage.
    if [[ " ${missing[*]-} " == *" linux-image-amd64 "* && -n "$(pick_kernel)" ]]; then
        local rest=()
        for p in "${missing[@]}"; do [[ $p == linux-image-amd64 ]] || rest+=("$p"); done
        missing=("${rest[@]+"${rest[@]}"}")
    fi
    if [[ ${#missing[@]} -eq 0 ]]; then
        return 0
    fi
    command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >&2
}

# Serialise concurrent builds into the same OUTDIR (e.g. pytest-xdist).
if command -v flock >/dev/null; then
    exec 9>"$OUTDIR/.build.lock"
    flock 9
fi

up_to_date() {
    local ver=$1 f
    for f in vmlinuz initramfs.cpio.gz kernel-version; do
        [[ -s $OUTDIR/$f && $OUTDIR/$f -nt $SCRIPT ]] || return 1
    done
    [[ "$(cat "$OUTDIR/kernel-version")" == "$ver" ]]
}

KVER=$(pick_kernel)
if [[ -n $KVER ]] && pkg_installed busybox-static && up_to_date "$KVER"; then
    exit 0
fi

ensure_packages
KVER=$(pick_kernel)
[[ -n $KVER ]] || die "no kernel with /boot/vmlinuz-<ver> and /lib/modules/<ver>/modules.dep"
[[ -x /bin/busybox ]] || die "/bin/busybox missing (package busybox-static)"
if up_to_date "$KVER"; then
    exit 0
fi
MODDIR=/lib/modules/$KVER
log "building guest for kernel $KVER in $OUTDIR"

WORK=$(mktemp -d "$OUTDIR/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,dev,proc,sys,tmp,lib/modules}

# --- busybox ---------------------------------------------------------------
cp /bin/busybox "$ROOT/bin/busybox"
for applet in $("$ROOT/bin/busybox" --list); do
    [[ $applet == busybox ]] || ln -s busybox "$ROOT/bin/$applet"
done
ln -s bin "$ROOT/sbin"

# --- modules ---------------------------------------------------------------
# modules.dep lines: "kernel/path/name.ko[.xz]: dep1.ko dep2.ko ..."
declare -A DEP_PATH=() DEP_LIST=()
while IFS= read -r line; do
    path=${line%%:*}
    deps=${line#*:}
    name=${path##*/}
    name=${name%%.ko*}
    name=${name//-/_}
    DEP_PATH[$name]=$path
    DEP_LIST[$name]=$deps
done <"$MODDIR/modules.dep"

is_builtin() {
    local name=$1
    [[ -f $MODDIR/modules.builtin ]] || return 1
    # modules.builtin paths may spell '_' as '-' (or the reverse).
    sed -e 's#.*/##' -e 's#\.ko$##' -e 's#-#_#g' "$MODDIR/modules.builtin" | grep -qx "$name"
}

declare -A VISITED=()
LOAD_ORDER=()
# Post-order DFS over the dependency graph: dependencies come first.
visit() {
    local name=${1//-/_} dep dname
    [[ -n ${VISITED[$name]-} ]] && return 0
    VISITED[$name]=1
    if [[ -z ${DEP_PATH[$name]-} ]]; then
        if is_builtin "$name"; then
            log "module $name is built in; skipping"
            return 0
        fi
        die "module $name is neither in modules.dep nor modules.builtin of $KVER"
    fi
    for dep in ${DEP_LIST[$name]}; do
        dname=${dep##*/}
        visit "${dname%%.ko*}"
    done
    LOAD_ORDER+=("$name")
}
for m in "${WANTED_MODULES[@]}"; do
    visit "$m"
done

: >"$ROOT/lib/modules/load-order"
for name in "${LOAD_ORDER[@]}"; do
    src=$MODDIR/${DEP_PATH[$name]}
    dst=$ROOT/lib/modules/$name.ko
    case $src in
        *.ko) cp "$src" "$dst" ;;
        *.ko.xz) xz -dc "$src" >"$dst" ;;
        *.ko.zst) zstd -qdc "$src" >"$dst" ;;
        *.ko.gz) gzip -dc "$src" >"$dst" ;;
        *) die "unknown module compression: $src" ;;
    esac
    echo "$name" >>"$ROOT/lib/modules/load-order"
done
log "modules (load order): ${LOAD_ORDER[*]-none}"

# --- /init -----------------------------------------------------------------
cat >"$ROOT/init" <<'INIT'
#!/bin/sh
# domsnap test guest init (busybox sh). Generated by scripts/build-guest.sh.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/null >/dev/ttyS0 2>&1

while read -r m; do
    [ -n "$m" ] || continue
    insmod "/lib/modules/$m.ko" || echo "DOMSNAP-WARN insmod $m failed"
done </lib/modules/load-order

tick=1
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        domsnap.tick=*) tick="${arg#domsnap.tick=}" ;;
        domsnap.ticker=*) ticker="${arg#domsnap.ticker=}" ;;
        domsnap.dirty=*) dirty="${arg#domsnap.dirty=}" ;;
    esac
done

# Benchmark helpers (off unless asked for on the command line).
if [ -n "${ticker-}" ]; then
    ( t=0; while :; do t=$((t + 1)); echo "DOMSNAP-T $t"; sleep "$ticker"; done ) &
fi
if [ -n "${dirty-}" ]; then
    # a shell of its own, so that renice lowers only it (and its dd) to nice 19
    # (busybox has no nice applet)
    sh -c 'renice -n 19 -p $$ >/dev/null 2>&1; p=0; while :; do
          dd if=/dev/zero of=/tmp/dirty bs=1M count="$1" conv=notrunc 2>/dev/null
          p=$((p + 1))
          [ "$p" -le 3 ] && echo "DOMSNAP-DIRTY pass=$p"
      done' dirty "$dirty" &
fi

# virtio-blk probing is synchronous, but give the device node a moment to
# appear when a virtio block device (virtio device id 2) is present.
has_virtio_blk() {
    for d in /sys/bus/virtio/devices/*; do
        [ -r "$d/device" ] || continue
        [ "$(cat "$d/device")" = "0x0002" ] && return 0
    done
    return 1
}
if has_virtio_blk; then
    i=0
    while [ ! -b /dev/vda ] && [ "$i" -lt 50 ]; do
        sleep 0.1
        i=$((i + 1))
    done
fi

# Counter in the first block: ASCII digits ended by a newline, else -1.
read_counter() {
    raw=$(dd if="$1" bs=512 count=1 iflag=direct 2>/dev/null | head -c 20 | tr '\000\n' 'Z;')
    case "$raw" in
        [0-9]*\;*) val="${raw%%;*}" ;;
        *) echo -1; return ;;
    esac
    case "$val" in
        *[!0-9]*) echo -1; return ;;
    esac
    while :; do
        case "$val" in
            0?*) val="${val#0}" ;;
            *) break ;;
        esac
    done
    echo "$val"
}

write_counter() {
    echo "$2" | dd of="$1" bs=512 count=1 conv=sync,notrunc,fsync oflag=direct 2>/dev/null \
        || echo "DOMSNAP-WARN write to $1 failed"
}

echo "DOMSNAP-BOOT"
n=0
nodisk_said=0
while :; do
    if [ -b /dev/vda ]; then
        prev=$(read_counter /dev/vda)
    else
        prev=-1
        if [ "$nodisk_said" = 0 ]; then
            echo "DOMSNAP-NODISK"
            nodisk_said=1
        fi
    fi
    n=$((n + 1))
    echo "DOMSNAP-TICK n=$n disk=$prev"
    [ -b /dev/vda ] && write_counter /dev/vda "$n"
    [ -b /dev/vdb ] && write_counter /dev/vdb "$n"
    sleep "$tick"
done
INIT
chmod 0755 "$ROOT/init"

# --- pack --------------------------------------------------------------------
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) \
    | gzip -9n >"$WORK/initramfs.cpio.gz"
cp "/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
echo "$KVER" >"$WORK/kernel-version"
mv -f "$WORK/vmlinuz" "$OUTDIR/vmlinuz"
mv -f "$WORK/initramfs.cpio.gz" "$OUTDIR/initramfs.cpio.gz"
mv -f "$WORK/kernel-version" "$OUTDIR/kernel-version"
log "done: $OUTDIR/vmlinuz $OUTDIR/initramfs.cpio.gz ($(du -h "$OUTDIR/initramfs.cpio.gz" | cut -f1))"
