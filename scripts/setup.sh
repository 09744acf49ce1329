#!/usr/bin/env bash
# Set up everything domsnap needs on a Debian machine: system packages, running
# Redis (and RabbitMQ for the broker test), a Python venv with domsnap, and the
# tiny test guest. Idempotent and quick when everything is in place.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "setup: $*" >&2; }

PKGS=(qemu-system-x86 qemu-utils redis-server busybox-static linux-image-amd64 cpio xz-utils
      kmod procps)
# systemd-analyze checks the dom0 worker unit (scripts/systemd/)
if ! command -v systemd-analyze >/dev/null 2>&1; then PKGS+=(systemd); fi
missing=()
for p in "${PKGS[@]}"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]]; then
        missing+=("$p")
    fi
done
# any installed kernel image with modules will do for the guest
if [[ " ${missing[*]-} " == *" linux-image-amd64 "* ]] && ls /boot/vmlinuz-* >/dev/null 2>&1; then
    rest=(); for p in "${missing[@]}"; do [[ $p == linux-image-amd64 ]] || rest+=("$p"); done
    missing=("${rest[@]+"${rest[@]}"}")
fi
if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing ${missing[*]}"
    SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" >&2
fi

# Redis: use the one running on 127.0.0.1:6379, or start one (no persistence: tests only)
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    log "starting redis-server"
    mkdir -p /tmp/domsnap-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        --dir /tmp/domsnap-redis --logfile /tmp/domsnap-redis/redis.log
    for _ in $(seq 50); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

# RabbitMQ (one integration test runs the cycle with it as the broker)
if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
    if ! command -v rabbitmq-server >/dev/null; then
        log "installing rabbitmq-server"
        SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            rabbitmq-server >&2
    fi
    log "starting rabbitmq-server"
    rabbitmq-server -detached >&2 || true
    for _ in $(seq 120); do (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null && break; sleep 0.5; done
fi

# Python: a venv with domsnap and its test tools
PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    log "creating .venv"
    "$PY" -m venv .venv
fi
stamp=.venv/.domsnap-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
    log "installing domsnap into .venv"
    .venv/bin/pip install -q --upgrade pip >&2
    .venv/bin/pip install -q -e '.[test]' >&2
    touch "$stamp"
fi

# compose's JSON Schema, to validate docker-compose.yml without a compose CLI (see
# tests/composecheck.py): the schema file out of the docker-compose wheel on PyPI, nothing else
schema=.cache/compose/compose_spec.json
if [[ ! -s $schema ]]; then
    log "fetching compose's JSON Schema"
    mkdir -p .cache/compose
    tmp=$(mktemp -d)
    .venv/bin/pip download -q --no-deps --only-binary=:all: -d "$tmp" docker-compose==1.29.2 >&2
    .venv/bin/python - "$tmp"/docker_compose-1.29.2-*.whl "$schema" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as whl:
    data = whl.read("compose/config/compose_spec.json")
with open(sys.argv[2] + ".tmp", "wb") as out:
    out.write(data)
PY
    mv "$schema.tmp" "$schema"
    rm -rf "$tmp"
fi

# the test guest: a Debian kernel + busybox initramfs, built here, never committed
scripts/build-guest.sh .cache/guest
log "ready"
