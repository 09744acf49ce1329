#!/bin/bash
# dom0's work, run by /lab-init from the payload disk (mounted at /lab): set up dom0,
# start xen's daemons, Redis and a domsnap worker with the xl driver, run the smoke
# cycle (one long-lived Python process), copy the logs to /lab/out, power off.
# Lines starting "LAB-" on the console are for the host (lab/xen/run.sh).
set -euo pipefail  # a failure ends here: the EXIT trap still saves the logs and powers off
export PATH=/opt/domsnap/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8
OUT=/lab/out
mkdir -p "$OUT"
exec </dev/null >/dev/console 2>&1

phase() {  # phase NAME: a milestone with dom0's uptime, on the console and in a file
    local up
    up=$(cut -d' ' -f1 /proc/uptime)
    echo "LAB-PHASE $1 uptime=${up}s"
    echo "$1 $up" >>"$OUT/phases.txt"
}
finish() {
    phase poweroff
    cp -a /var/log/xen "$OUT/xen-logs" 2>/dev/null || true
    xl dmesg >"$OUT/xl-dmesg.log" 2>&1 || true
    xl list >"$OUT/xl-list-final.txt" 2>&1 || true
    dmesg >"$OUT/dom0-dmesg.log" 2>&1 || true
    set +e
    [[ -n ${WORKER_PID-} ]] && kill -TERM "$WORKER_PID" 2>/dev/null
    sleep 2
    sync
    umount /lab 2>/dev/null || sync
    echo "LAB-END"
    echo o >/proc/sysrq-trigger
    sleep 120
}
trap finish EXIT
phase dom0-init

mount -o remount,rw / 2>/dev/null || true
mkdir -p /dev/pts /dev/shm
mountpoint -q /dev/pts || mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm      # Celery's prefork pool (SemLock) needs it
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/xen /run/lock /var/log/xen/console /var/lib/xen
ip link set lo up
mount -o ro /dev/vdb /opt/domsnap || { echo "LAB-FATAL no domsnap layer at /dev/vdb"; exit 1; }

for m in xen-evtchn xen-gntdev xen-gntalloc xen-blkback xen-netback xen-privcmd; do
    modprobe "$m" || echo "LAB-WARN modprobe $m failed"
done
phase modules
/etc/init.d/xen start >"$OUT/xen-start.log" 2>&1 || { cat "$OUT/xen-start.log"; echo "LAB-FATAL xen start failed"; exit 1; }
phase xen-started
xl info >"$OUT/xl-info.txt" 2>&1 || true

# LAB_SUITE (from the host, in/lab.env): a comma list of smoke (the default cycle),
# capture (capture.py: issue 8's stream captures), bench-live (bench_live.py: live vs
# save pause), lvm (smoke.py --suite lvm), lvm-direct (lvm_direct.py: domsnap's Lvm
# backend on dom0's LVM with no worker). capture and bench-live need no worker and run
# before it starts (its heartbeat runs xl every few seconds: noise for the bench).
LAB_SUITE=smoke
[[ -f /lab/in/lab.env ]] && . /lab/in/lab.env
export LAB_SUITE
echo "LAB-SUITE $LAB_SUITE"
has_suite() { [[ ,$LAB_SUITE, == *,$1,* ]]; }
# No udevd runs in this dom0: LVM (the lvm suites, the worker's lvm calls) must make its
# /dev nodes itself instead of waiting for udev to do it
[[ -S /run/udev/control ]] || export DM_DISABLE_UDEV=1
rc=0
if has_suite capture; then
    phase capture
    python3 /lab/in/capture.py --out "$OUT" --guest /lab/in/guest || rc=$?
    echo "LAB-CAPTURE-EXIT $rc"
    # with more suites to come, let the host read the captures now: the payload image is
    # consistent (journal flushed) while mounted read-only, for LAB_BENCH_OUT_HOLD_S seconds
    if [[ $LAB_SUITE != capture ]] && mount -o remount,ro /lab; then
        echo "LAB-OUT-READONLY capture"
        sleep "${LAB_BENCH_OUT_HOLD_S:-90}"
        mount -o remount,rw /lab || { echo "LAB-FATAL /lab stays read-only"; exit 1; }
    fi
fi
if has_suite bench-live; then
    phase bench-live
    python3 /lab/in/bench_live.py --out "$OUT" --guest /lab/in/guest || rc=$?
    echo "LAB-BENCH-EXIT $rc"
fi
if has_suite lvm-direct; then
    phase lvm-direct
    python /lab/in/lvm_direct.py --out "$OUT" --guest /lab/in/guest || rc=$?
    echo "LAB-LVM-DIRECT-EXIT $rc"
fi
if ! has_suite smoke && ! has_suite lvm && ! has_suite faults; then
    echo "LAB-SMOKE-EXIT $rc"
    exit 0
fi

redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile "$OUT/redis.log"
phase redis-started

export DOMSNAP_DRIVER=xl DOMSNAP_HOST=lab-dom0 DOMSNAP_REDIS_URL=redis://127.0.0.1:6379/0
export PYTHONDONTWRITEBYTECODE=1
# The default pause budget (30 s for a 128 MiB domain) is sized for real hosts; under
# nested TCG on a loaded host one step can take minutes and the guard would resume the
# domain in the middle of a save (seen: the guard fired 97 s into a disk-only create)
export DOMSNAP_PAUSE_BUDGET_S=${LAB_PAUSE_BUDGET_S:-600}
# Liveness: one heartbeat round is an `xl list -l` and more; nested and loaded it took
# longer than the default 20 s TTL and the host looked dead between rounds (seen:
# "lab-dom0 ... has no live worker" right after a create)
export DOMSNAP_HOST_TTL_S=${LAB_HOST_TTL_S:-300}
setsid domsnap worker --driver xl --host lab-dom0 -c 2 --inflight-concurrency 2 \
    --loglevel INFO >"$OUT/worker.log" 2>&1 &
WORKER_PID=$!
phase worker-spawned

suites=()
has_suite smoke && suites+=(--suite smoke)
has_suite faults && suites+=(--suite faults)
has_suite lvm && suites+=(--suite lvm)
python /lab/in/smoke.py --out "$OUT" --guest /lab/in/guest --worker-log "$OUT/worker.log" \
    "${suites[@]}" || rc=$?
echo "LAB-SMOKE-EXIT $rc"
