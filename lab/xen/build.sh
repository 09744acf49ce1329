#!/usr/bin/env bash
# Build the nested Xen lab from Debian packages (nothing built here is committed).
#
# Usage: lab/xen/build.sh            (as root: debootstrap, chroot, mounts)
#
# Layers, each cached under $LAB_CACHE (default: <repo>/.cache/lab) in a directory
# named by a hash of its inputs, so a layer is rebuilt only when its inputs change:
#   base-<H>/      debootstrap bookworm minbase + base/packages.txt, the dom0
#                  initramfs with virtio + ext4, /lab-init; rootfs/ (the tree, kept
#                  for the chroot of the domsnap layer) and rootfs.img (4 GiB ext4).
#                  H = packages list, base/lab-init, the layer's recipe, the mirror.
#   xen-<VER>/     xen (the hypervisor, gunzipped from xen-hypervisor-4.17-amd64 of the
#                  same version as the rootfs's xen-utils-4.17, or $LAB_XEN_VERSION)
#   guest-<H>/     the PV domU: the dom0 kernel + a busybox-static initramfs with
#                  xen-blkfront.ko (H = base + guest/init + the layer's recipe)
#   domsnap-<H>/   domsnap.img: an ext4 image holding /opt/domsnap/venv, domsnap and its
#                  dependencies installed from wheels built on the host, in a chroot of
#                  the base tree (H = base + the project's files): the only layer
#                  rebuilt when only the project changed.
# Prints the paths of the layers (KEY=PATH lines) on stdout, as lab/xen/run.sh reads
# them; everything else goes to stderr. Times of each layer go to $LAB_CACHE/times.log.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${LAB_CACHE:-$REPO/.cache/lab}
SUITE=bookworm
ROOT_SIZE=4G

log() { echo "lab-build: $*" >&2; }
die() { echo "lab-build: error: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "needs root (debootstrap, chroot)"
mkdir -p "$CACHE"
exec 9>"$CACHE/.build.lock"
flock 9

need_host_packages() {
    local missing=() p
    for p in debootstrap e2fsprogs qemu-utils qemu-system-x86 xz-utils cpio kmod; do
        [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" == "install ok installed" ]] \
            || missing+=("$p")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        log "installing on the host: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            "${missing[@]}" >&2
    fi
}

# The Debian mirror apt uses here for the main archive (deb822 or one-line sources).
mirror() {
    local uri
    if [[ -n ${LAB_MIRROR-} ]]; then echo "$LAB_MIRROR"; return; fi
    uri=$(awk '/^URIs:/ {print $2}' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | grep -v -- '-security' | head -n1 || true)
    if [[ -z $uri ]]; then
        uri=$(awk '$1 == "deb" && $3 == "bookworm" {print $2}' /etc/apt/sources.list \
            2>/dev/null | head -n1 || true)
    fi
    [[ -n $uri ]] || die "no Debian mirror found in apt's sources (set LAB_MIRROR)"
    echo "$uri"
}

hash_of() {  # hash_of STRING FILE... : sha256 of a string and the files' contents
    local s=$1; shift
    { echo "$s"; cat "$@"; } | sha256sum | cut -c1-16
}

elapsed() { echo $(( $(date +%s) - $1 )); }
record_time() { echo "$(date -Is) $1 $2s" >>"$CACHE/times.log"; log "$1 took $2 s"; }

# chroot with /proc, /sys, /dev mounted; unmounted whatever happens
MOUNTS=()
cleanup_mounts() {
    local i
    for (( i=${#MOUNTS[@]}-1; i>=0; i-- )); do
        umount -l "${MOUNTS[$i]}" 2>/dev/null || true
    done
    MOUNTS=()
}
trap cleanup_mounts EXIT
chroot_mounts() {
    local root=$1
    mount -t proc proc "$root/proc"; MOUNTS+=("$root/proc")
    mount -t sysfs sysfs "$root/sys"; MOUNTS+=("$root/sys")
    mount --bind /dev "$root/dev"; MOUNTS+=("$root/dev")
}

# ---------------------------------------------------------------- base
MIRROR=$(mirror)
build_base() {
    local t0 tmp root pkgs
    t0=$(date +%s)
    need_host_packages
    tmp=$CACHE/.base-$BASE_HASH.tmp
    rm -rf "$tmp"; mkdir -p "$tmp"
    root=$tmp/rootfs
    pkgs=$(grep -v '^#' "$HERE/base/packages.txt" | grep . | paste -sd, -)
    log "debootstrap $SUITE from $MIRROR (minbase + $pkgs)"
    debootstrap --variant=minbase --include="$pkgs" "$SUITE" "$root" "$MIRROR" \
        >"$tmp/debootstrap.log" 2>&1 || { tail -n 30 "$tmp/debootstrap.log" >&2; die "debootstrap failed"; }
    record_time debootstrap "$(elapsed "$t0")"

    printf '%s\n' virtio_pci virtio_blk ext4 >>"$root/etc/initramfs-tools/modules"
    chroot_mounts "$root"
    chroot "$root" update-initramfs -u -k all >&2
    cleanup_mounts

    # dom0 settings: guest consoles in files; no fstab; a hostname; no apt leftovers
    if grep -q '^#\?XENCONSOLED_ARGS' "$root/etc/default/xen" 2>/dev/null; then
        sed -i 's|^#\?XENCONSOLED_ARGS=.*|XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console --timestamp=guest"|' \
            "$root/etc/default/xen"
    else
        echo 'XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console --timestamp=guest"' \
            >>"$root/etc/default/xen"
    fi
    : >"$root/etc/fstab"
    echo lab-dom0 >"$root/etc/hostname"
    printf '127.0.0.1\tlocalhost lab-dom0\n' >"$root/etc/hosts"
    install -m 0755 "$HERE/base/lab-init" "$root/lab-init"
    mkdir -p "$root/opt/domsnap" "$root/lab"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*_Packages

    local kver
    kver=$(basename "$(ls -1d "$root"/lib/modules/*/ | sort -V | tail -n1)")
    echo "$kver" >"$tmp/kernel-version"
    dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Version}' xen-utils-4.17 >"$tmp/xen-version"
    cp "$root/boot/vmlinuz-$kver" "$tmp/vmlinuz"
    cp "$root/boot/initrd.img-$kver" "$tmp/initrd.img"

    log "making rootfs.img ($ROOT_SIZE ext4) from the tree"
    mkfs.ext4 -q -F -L labroot -d "$root" "$tmp/rootfs.img" "$ROOT_SIZE" >&2
    rm -rf "$BASE"; mv "$tmp" "$BASE"
    touch "$BASE/.done"
    record_time "base (kernel $kver, xen-utils $(cat "$BASE/xen-version"))" "$(elapsed "$t0")"
}
# a layer's hash covers its own recipe (the function's text), not the whole script
BASE_HASH=$(hash_of "$SUITE $MIRROR $ROOT_SIZE $(declare -f build_base chroot_mounts)" \
    "$HERE/base/packages.txt" "$HERE/base/lab-init")
BASE=$CACHE/base-$BASE_HASH
[[ -f $BASE/.done ]] || build_base
log "base: $BASE"

# ---------------------------------------------------------------- xen
XEN_VERSION=${LAB_XEN_VERSION:-$(cat "$BASE/xen-version")}
XEN=$CACHE/xen-$XEN_VERSION
build_xen() {
    local t0 tmp
    t0=$(date +%s)
    tmp=$CACHE/.xen.tmp
    rm -rf "$tmp"; mkdir -p "$tmp/pkg"
    (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "xen-hypervisor-4.17-amd64=$XEN_VERSION" >&2)
    dpkg-deb -x "$tmp"/xen-hypervisor-4.17-amd64_*.deb "$tmp/pkg"
    gunzip -c "$tmp"/pkg/boot/xen-4.17-amd64.gz >"$tmp/xen"
    rm -rf "$XEN"; mkdir -p "$XEN"
    mv "$tmp/xen" "$XEN/xen"
    rm -rf "$tmp"
    touch "$XEN/.done"
    record_time "xen $XEN_VERSION" "$(elapsed "$t0")"
}
[[ -f $XEN/.done ]] || build_xen
log "xen: $XEN"

# ---------------------------------------------------------------- guest (PV domU)
build_guest() {
    local t0 tmp root kver moddir applet m path
    t0=$(date +%s)
    tmp=$CACHE/.guest.tmp
    rm -rf "$tmp"; mkdir -p "$tmp/pkg"
    root=$tmp/root
    mkdir -p "$root"/{bin,dev,proc,sys,tmp,lib/modules}
    # busybox-static: a dynamic busybox finds no libc in the initramfs and the domU dies
    (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root busybox-static >&2)
    dpkg-deb -x "$tmp"/busybox-static_*.deb "$tmp/pkg"
    cp "$tmp/pkg/bin/busybox" "$root/bin/busybox"
    for applet in $("$root/bin/busybox" --list); do
        [[ $applet == busybox ]] || ln -s busybox "$root/bin/$applet"
    done
    ln -s bin "$root/sbin"
    kver=$(cat "$BASE/kernel-version")
    moddir=$BASE/rootfs/lib/modules/$kver
    # xen-blkfront (no dependencies but built-ins in Debian's kernel): without it no /dev/xvda
    for m in xen-blkfront; do
        path=$(find "$moddir" -name "$m.ko*" | head -n1)
        [[ -n $path ]] || die "$m not in $moddir"
        case $path in
            *.ko) cp "$path" "$root/lib/modules/$m.ko" ;;
            *.ko.xz) xz -dc "$path" >"$root/lib/modules/$m.ko" ;;
            *) die "unknown module compression: $path" ;;
        esac
    done
    install -m 0755 "$HERE/guest/init" "$root/init"
    (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) \
        | gzip -9n >"$tmp/initramfs.cpio.gz"
    rm -rf "$GUEST"; mkdir -p "$GUEST"
    cp "$BASE/vmlinuz" "$GUEST/vmlinuz"
    mv "$tmp/initramfs.cpio.gz" "$GUEST/initramfs.cpio.gz"
    rm -rf "$tmp"
    touch "$GUEST/.done"
    record_time guest "$(elapsed "$t0")"
}
GUEST_HASH=$(hash_of "$BASE_HASH $(declare -f build_guest)" "$HERE/guest/init")
GUEST=$CACHE/guest-$GUEST_HASH
[[ -f $GUEST/.done ]] || build_guest
log "guest: $GUEST"

# ---------------------------------------------------------------- domsnap (venv)
project_files() {  # the files that make domsnap's wheel, tracked or new
    git -C "$REPO" ls-files -co --exclude-standard -- pyproject.toml domsnap workers tasks schemas \
        | LC_ALL=C sort
}
mapfile -t PFILES < <(project_files)
[[ ${#PFILES[@]} -gt 0 ]] || die "no project files found under $REPO"
build_domsnap() {
    local t0 tmp root py
    t0=$(date +%s)
    tmp=$CACHE/.domsnap.tmp
    rm -rf "$tmp"; mkdir -p "$tmp/wheels" "$tmp/opt"
    py=${LAB_HOST_PYTHON:-$REPO/.venv/bin/python}
    [[ -x $py ]] || py=python3
    [[ "$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" == 3.11 ]] \
        || die "$py is not Python 3.11 (dom0's Python is 3.11): set LAB_HOST_PYTHON"
    log "pip wheel domsnap and its dependencies (host $py)"
    # async-timeout: redis needs it below Python 3.11.3 (dom0 has 3.11.2)
    "$py" -m pip wheel -q --wheel-dir "$tmp/wheels" "$REPO" 'async-timeout>=4.0.3' >&2
    root=$BASE/rootfs
    mount --bind "$tmp/opt" "$root/opt/domsnap"; MOUNTS+=("$root/opt/domsnap")
    mkdir -p "$root/mnt/wheels"
    mount --bind "$tmp/wheels" "$root/mnt/wheels"; MOUNTS+=("$root/mnt/wheels")
    chroot_mounts "$root"
    log "venv in a chroot of the base tree (dom0's own Python, run natively)"
    # a clean environment: none of the host's PIP_* settings leak into dom0's venv
    local cenv=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8)
    chroot "$root" "${cenv[@]}" /usr/bin/python3 -m venv /opt/domsnap/venv >&2
    chroot "$root" "${cenv[@]}" /opt/domsnap/venv/bin/pip install -q --no-cache-dir \
        --disable-pip-version-check --no-index --find-links /mnt/wheels \
        domsnap async-timeout >&2
    chroot "$root" "${cenv[@]}" /opt/domsnap/venv/bin/python -c \
        'import domsnap.client, workers.runtime, tasks' >&2
    cleanup_mounts
    rmdir "$root/mnt/wheels"
    find "$root/root" -mindepth 1 -maxdepth 1 -name .cache -exec rm -rf {} + 2>/dev/null || true
    mkfs.ext4 -q -F -L domsnap -d "$tmp/opt" "$tmp/domsnap.img" 1G >&2
    rm -rf "$DLAYER"; mkdir -p "$DLAYER"
    mv "$tmp/domsnap.img" "$DLAYER/domsnap.img"
    rm -rf "$tmp"
    touch "$DLAYER/.done"
    record_time domsnap "$(elapsed "$t0")"
}
DOMSNAP_HASH=$(cd "$REPO" && hash_of "$BASE_HASH $(declare -f build_domsnap)
$(printf '%s\n' "${PFILES[@]}")" "${PFILES[@]}")
DLAYER=$CACHE/domsnap-$DOMSNAP_HASH
[[ -f $DLAYER/.done ]] || build_domsnap
log "domsnap: $DLAYER"

# old domsnap layers of this base go (they are cheap to rebuild); other layers stay
for d in "$CACHE"/domsnap-*; do
    [[ -d $d && $d != "$DLAYER" ]] && rm -rf "$d"
done

echo "LAB_ROOTFS=$BASE/rootfs.img"
echo "LAB_DOM0_KERNEL=$BASE/vmlinuz"
echo "LAB_DOM0_INITRD=$BASE/initrd.img"
echo "LAB_XEN=$XEN/xen"
echo "LAB_GUEST_KERNEL=$GUEST/vmlinuz"
echo "LAB_GUEST_INITRD=$GUEST/initramfs.cpio.gz"
echo "LAB_DOMSNAP_IMG=$DLAYER/domsnap.img"
