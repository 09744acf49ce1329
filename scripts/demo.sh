#!/usr/bin/env bash
# The demo: boot a real local domain (a tiny Linux guest under QEMU), run a worker
# for this host, and take it through create -> list -> revert -> delete via the queue.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

DEMO=${DOMSNAP_DEMO_DIR:-$REPO/.cache/demo}
export DOMSNAP_STATE_DIR=$DEMO/state
export DOMSNAP_HOST=${DOMSNAP_HOST:-demo-host}
export DOMSNAP_REDIS_URL=${DOMSNAP_REDIS_URL:-redis://127.0.0.1:6379/0}
export DOMSNAP_KEY_PREFIX=${DOMSNAP_KEY_PREFIX:-domsnap-demo}
export DOMSNAP_SNAPSHOT_ROOTS=$DEMO/images
export DOMSNAP_HEARTBEAT_S=1
D=(.venv/bin/domsnap)

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

worker_pid=""
cleanup() {
    set +e
    "${D[@]}" domain-destroy --undefine demo >/dev/null 2>&1
    if [[ -n $worker_pid ]]; then kill -TERM "$worker_pid" 2>/dev/null; wait "$worker_pid" 2>/dev/null; fi
}
trap cleanup EXIT

rm -rf "$DEMO"
mkdir -p "$DEMO/images"
redis-cli -u "$DOMSNAP_REDIS_URL" --scan --pattern "$DOMSNAP_KEY_PREFIX:*" | \
    xargs -r redis-cli -u "$DOMSNAP_REDIS_URL" del >/dev/null

step "two qcow2 disks and a domain config"
qemu-img create -q -f qcow2 "$DEMO/images/root.qcow2" 64M
qemu-img create -q -f qcow2 "$DEMO/images/data.qcow2" 64M
cat > "$DEMO/demo.cfg" <<CFG
name = "demo"
memory = 128
vcpus = 1
kernel = "$REPO/.cache/guest/vmlinuz"
ramdisk = "$REPO/.cache/guest/initramfs.cpio.gz"
extra = "console=ttyS0 quiet panic=-1"
disk = [ "$DEMO/images/root.qcow2,qcow2,vda,rw", "$DEMO/images/data.qcow2,qcow2,vdb,rw" ]
CFG
cat "$DEMO/demo.cfg"

step "start the worker for host $DOMSNAP_HOST"
"${D[@]}" worker --loglevel WARNING > "$DEMO/worker.log" 2>&1 &
worker_pid=$!

step "boot the domain (a busybox guest that counts, on its console and on its disk)"
"${D[@]}" domain-create "$DEMO/demo.cfg"
CONSOLE=$(ls "$DOMSNAP_STATE_DIR"/domains/*/console.log)
wait_tick() {  # wait until the guest printed tick >= $1
    for _ in $(seq 600); do
        n=$(grep -a -o 'DOMSNAP-TICK n=[0-9]*' "$CONSOLE" 2>/dev/null | tail -1 | cut -d= -f2 || true)
        [[ -n ${n:-} && $n -ge $1 ]] && return 0
        sleep 0.5
    done
    echo "the guest did not reach tick $1" >&2; return 1
}
last_tick() { grep -a 'DOMSNAP-TICK' "$CONSOLE" | tail -1; }
wait_tick 3
for _ in $(seq 100); do "${D[@]}" hosts 2>/dev/null | grep -q alive && break; sleep 0.2; done
"${D[@]}" domain-list

step "snapshot-create: memory + both disks, guest paused only for the switchover"
"${D[@]}" snapshot-create -n before -d "demo snapshot" demo
echo "guest at snapshot time: $(last_tick)"

step "let the guest run on"
t=$(last_tick | grep -o 'n=[0-9]*' | cut -d= -f2)
wait_tick $((t + 4))
echo "guest now: $(last_tick)"

step "snapshot-create --disk-only with an xl.snapshot.cfg (external, root disk only)"
cat > "$DEMO/snap.cfg" <<CFG
name = "rootonly"
description = "External disk-only\\
               snapshot. Only care about the root file system"
memory = "no"
type = "external"
disk = [ "vdev=vda, format=qcow2" ]
CFG
"${D[@]}" snapshot-create demo "$DEMO/snap.cfg"

step "snapshot-list and snapshot-list -l"
"${D[@]}" snapshot-list demo
"${D[@]}" snapshot-list -l demo

step "snapshot-revert -n before --paused: memory and disks come back"
"${D[@]}" snapshot-revert -n before --paused demo
offset=$(stat -c %s "$CONSOLE")
"${D[@]}" domain-list
"${D[@]}" domain-unpause demo
for _ in $(seq 100); do
    tail -c +$((offset + 1)) "$CONSOLE" | grep -aq DOMSNAP-TICK && break; sleep 0.2
done
echo "first tick after the revert: $(tail -c +$((offset + 1)) "$CONSOLE" | grep -a DOMSNAP-TICK | head -1)"
echo "(the guest continues from the snapshot's counter, and its disk holds what it wrote then)"

step "snapshot-delete both snapshots"
"${D[@]}" snapshot-delete -n rootonly demo
"${D[@]}" snapshot-delete -n before demo
"${D[@]}" snapshot-list --json demo

step "done"
