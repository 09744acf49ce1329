#!/usr/bin/env bash
# Install and start libvirt for bench/libvirt.py's full mode (issue 11, benchmark 1).
#
# Debian packages only (libvirt-daemon, libvirt-daemon-driver-qemu, libvirt-clients).
# This machine has no systemd, so the daemons are started by hand: the libvirt-qemu
# user and group are created, QEMU runs as root with no security driver, and
# stdio_handler = "file" makes QEMU itself write the serial console file (so the
# benchmark can time the guest's lines as they reach the host, as it does for
# domsnap's domains). Then `virtlogd -d` and `libvirtd -d`.
#
# Idempotent: packages, user, config lines and daemons are each only added or started
# when missing. Check with: virsh -c qemu:///system version
set -euo pipefail

log() { echo "setup-libvirt: $*" >&2; }
PACKAGES=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients)

missing=()
for p in "${PACKAGES[@]}"; do
    [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" == "install ok installed" ]] \
        || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    # no policy-rc.d games: without systemd or sysv start, the postinst cannot start it
    apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >&2
fi

getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
getent passwd libvirt-qemu >/dev/null \
    || useradd --system -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
getent group libvirt >/dev/null || groupadd --system libvirt

CONF=/etc/libvirt/qemu.conf
set_conf() {  # key value: replace an active or commented line, else append
    local key=$1 value=$2
    if grep -Eq "^[[:space:]]*${key}[[:space:]]*=[[:space:]]*${value//\"/\\\"}[[:space:]]*$" "$CONF"; then
        return 0
    fi
    if grep -Eq "^[[:space:]]*#?[[:space:]]*${key}[[:space:]]*=" "$CONF"; then
        sed -i -E "0,/^[[:space:]]*#?[[:space:]]*${key}[[:space:]]*=.*/s||${key} = ${value}|" "$CONF"
    else
        echo "${key} = ${value}" >>"$CONF"
    fi
    log "$CONF: ${key} = ${value}"
}
set_conf user '"root"'
set_conf group '"root"'
set_conf security_driver '"none"'
set_conf stdio_handler '"file"'

mkdir -p /run/libvirt /var/log/libvirt/qemu /var/lib/libvirt/qemu

running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
if ! running /run/virtlogd.pid; then
    log "starting virtlogd"
    virtlogd -d
fi
if ! running /run/libvirtd.pid; then
    log "starting libvirtd"
    libvirtd -d
fi
for _ in $(seq 1 100); do
    if virsh -c qemu:///system version >/dev/null 2>&1; then
        virsh -c qemu:///system version >&2
        exit 0
    fi
    sleep 0.2
done
echo "setup-libvirt: libvirtd did not answer on qemu:///system" >&2
exit 1
