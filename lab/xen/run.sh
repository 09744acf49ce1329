#!/usr/bin/env bash
# Boot the nested Xen lab (QEMU TCG → Xen 4.17 → Debian dom0) and run the smoke cycle
# inside dom0; print its results; exit 0 only if every step passed.
#
# Usage: lab/xen/run.sh            (runs lab/xen/build.sh first: cached layers are reused)
#
# The host talks to the lab over nothing but the serial console (read-only: progress
# lines) and a per-run ext4 image (/dev/vdc in dom0): in/ holds dom0's init.sh, the
# smoke script and the domU's kernel + initramfs; dom0 writes out/ (results.json, the
# worker's, xl's and xen's logs), read back here with debugfs (no mount needed).
# Disks: vda = a qcow2 overlay on the cached rootfs.img (the cache stays pristine),
# vdb = the domsnap layer (read-only), vdc = the payload.
#
# Environment: LAB_TIMEOUT (seconds for the whole boot + cycle, default 3600),
# LAB_RUN_DIR (default $LAB_CACHE/run), LAB_CACHE (see build.sh), LAB_SUITE (what dom0
# runs: a comma list of smoke (the default), capture, bench-live, lvm; see the README),
# and the bench's LAB_BENCH_* knobs: these LAB_* values reach dom0 in in/lab.env.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${LAB_CACHE:-$REPO/.cache/lab}
RUN=${LAB_RUN_DIR:-$CACHE/run}
TIMEOUT=${LAB_TIMEOUT:-3600}
[[ $TIMEOUT =~ ^[0-9]+$ ]] || { echo "LAB_TIMEOUT must be a number of seconds" >&2; exit 2; }

log() { echo "lab-run: $*" >&2; }

t_build=$(date +%s)
declare -A L=()
while IFS='=' read -r key value; do
    [[ $key == LAB_* ]] && L[$key]=$value
done < <(bash "$HERE/build.sh")
build_s=$(( $(date +%s) - t_build ))
for key in LAB_ROOTFS LAB_DOM0_KERNEL LAB_DOM0_INITRD LAB_XEN LAB_GUEST_KERNEL \
           LAB_GUEST_INITRD LAB_DOMSNAP_IMG; do
    [[ -n ${L[$key]-} && -s ${L[$key]} ]] || { log "build gave no $key"; exit 1; }
done
log "build (cached layers reused): ${build_s} s"

rm -rf "$RUN"
mkdir -p "$RUN/payload/in/guest" "$RUN/payload/out"
install -m 0755 "$HERE/dom0/init.sh" "$RUN/payload/in/init.sh"
install -m 0644 "$HERE"/dom0/*.py "$RUN/payload/in/"
# the knobs dom0 reads (init.sh sources it): only LAB_SUITE and LAB_BENCH_*, validated
SUITE=${LAB_SUITE:-smoke}
[[ $SUITE =~ ^[a-z,-]+$ ]] || { log "LAB_SUITE must be a comma list of suite names"; exit 2; }
{
    printf 'LAB_SUITE=%q\n' "$SUITE"
    for key in $(compgen -e | grep '^LAB_BENCH_' || true); do
        [[ ${!key} =~ ^[A-Za-z0-9.,:=_-]*$ ]] || { log "$key has odd characters"; exit 2; }
        printf '%s=%q\n' "$key" "${!key}"
    done
} >"$RUN/payload/in/lab.env"
cp "${L[LAB_GUEST_KERNEL]}" "$RUN/payload/in/guest/vmlinuz"
cp "${L[LAB_GUEST_INITRD]}" "$RUN/payload/in/guest/initramfs.cpio.gz"
mkfs.ext4 -q -F -L labio -d "$RUN/payload" "$RUN/io.img" 512M
qemu-img create -q -f qcow2 -b "${L[LAB_ROOTFS]}" -F raw "$RUN/root.qcow2"
# QEMU's -initrd takes "file args,file": names without commas or spaces, so link them here
ln -s "${L[LAB_XEN]}" "$RUN/xen"
ln -s "${L[LAB_DOM0_KERNEL]}" "$RUN/vmlinuz"
ln -s "${L[LAB_DOM0_INITRD]}" "$RUN/initrd.img"

log "booting (timeout ${TIMEOUT} s); console in $RUN/console.log"
cd "$RUN"
SECONDS=0
set +e
timeout --kill-after=30 "$TIMEOUT" \
    qemu-system-x86_64 -accel tcg -machine q35 -cpu qemu64,+svm -m 3072 -smp 2 \
        -nographic -no-reboot -kernel xen \
        -append "dom0_mem=1536M console=com1 com1=115200,8n1 noreboot" \
        -initrd "vmlinuz root=/dev/vda rw console=hvc0 init=/lab-init,initrd.img" \
        -drive file=root.qcow2,if=virtio,format=qcow2 \
        -drive file="${L[LAB_DOMSNAP_IMG]}",if=virtio,format=raw,readonly=on \
        -drive file=io.img,if=virtio,format=raw \
        </dev/null 2>&1 \
    | while IFS= read -r line; do
        line=${line%$'\r'}
        printf '[%5d] %s\n' "$SECONDS" "$line" >>console.log
        case $line in
            *LAB-*) printf '[%5d] %s\n' "$SECONDS" "$line" >&2 ;;
        esac
    done
rc=${PIPESTATUS[0]}
set -e
wall=$SECONDS
log "QEMU exited ($rc) after ${wall} s"
[[ $rc -eq 124 || $rc -eq 137 ]] && log "TIMEOUT: the lab did not finish within ${TIMEOUT} s"

rm -rf "$RUN/out"
debugfs -R "rdump /out $RUN" io.img >/dev/null 2>&1 || true
boot_s=$(grep -m1 'LAB-PHASE dom0-init' console.log | sed -n 's/^\[ *\([0-9]*\)\].*/\1/p' || true)
echo "${boot_s:-?}" >boot-seconds

python3 - "$RUN" "$build_s" "$wall" "${boot_s:-}" "$rc" <<'PY'
import json, pathlib, sys
run, build_s, wall, boot_s, rc = pathlib.Path(sys.argv[1]), *sys.argv[2:]
res = run / "out" / "results.json"
print(f"\n===== Xen lab: build {build_s} s, QEMU {wall} s (exit {rc}), "
      f"dom0 init reached at {boot_s or '?'} s =====")
phases = run / "out" / "phases.txt"
if phases.exists():
    print("dom0 phases (dom0 uptime): " + ", ".join(
        f"{n} {t}s" for n, t in (l.split() for l in phases.read_text().splitlines() if l)))
if not res.exists():
    print("no results.json: dom0 never ran the smoke cycle (see console.log)")
    sys.exit(1)
doc = json.loads(res.read_text())
done = {s["name"] for s in doc["steps"]}
failed = False
for s in doc["steps"]:
    print(f"{'ok  ' if s['ok'] else 'FAIL'} {s['name']:<28} {s['seconds']:8.1f} s  {s['detail']}")
    failed |= not s["ok"]
for name in doc["facts"].get("plan", []):
    if name not in done:
        print(f"SKIP {name:<28}        -    not run")
        failed = True
for s in doc["steps"]:
    if not s["ok"]:
        print(f"\n--- {s['name']}: {s['detail']}")
        for k, v in s.get("logs", {}).items():
            print(f"--- {k} (tail)\n{v}")
sys.exit(1 if failed else 0)
PY
