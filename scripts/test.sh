#!/usr/bin/env bash
# Set up and run the whole test suite: lint, unit, integration (real Redis, real
# worker processes, real QEMU), vm (a real Linux guest). Prints how long each suite
# took; exits non-zero if any suite failed or ran no test.
set -uo pipefail
cd "$(dirname "$0")/.."

t0=$(date +%s)
bash scripts/setup.sh || { echo "setup failed" >&2; exit 1; }
echo "setup: $(( $(date +%s) - t0 )) s"

export PYTHONDONTWRITEBYTECODE=1
declare -a names=() secs=() results=()
failed=0

run_suite() {
    local name=$1; shift
    local start rc
    start=$(date +%s)
    echo
    echo "===== suite: $name ====="
    "$@"
    rc=$?
    if [[ $rc -eq 5 ]]; then
        echo "suite $name ran no test" >&2
    fi
    names+=("$name"); secs+=("$(( $(date +%s) - start ))")
    if [[ $rc -eq 0 ]]; then results+=("ok"); else results+=("FAILED (exit $rc)"); failed=1; fi
}

run_suite lint bash -c '.venv/bin/ruff check domsnap workers tasks schemas tests bench \
    && .venv/bin/mypy && .venv/bin/python -m schemas.export --check'
run_suite unit .venv/bin/pytest -q -p no:cacheprovider tests/unit
# issue 7's reliability suites (model-based test, faults, bad input through the queue,
# formats, fsck, limits) and issue 10's scheduled backups run as suites of their own,
# so their times show below; the rest is the end-to-end integration suite
I=tests/integration
RELIABILITY=($I/test_model.py $I/test_model_regressions.py $I/test_faults.py
             $I/test_faults_redis.py $I/test_fencing.py $I/test_recovery.py
             $I/test_bad_messages.py $I/test_concurrency.py $I/test_limits.py
             $I/test_mixed_formats.py $I/test_fsck.py $I/test_cancel_idempotent.py
             $I/test_acl.py $I/test_xl_states.py $I/test_faults_xl.py $I/test_xl_monitor.py)
SCHEDULE=($I/test_schedule.py)
ignore=(); for f in "${RELIABILITY[@]}" "${SCHEDULE[@]}"; do ignore+=(--ignore "$f"); done
run_suite integration .venv/bin/pytest -q -p no:cacheprovider --durations=15 "${ignore[@]}" $I
run_suite reliability .venv/bin/pytest -q -p no:cacheprovider --durations=15 "${RELIABILITY[@]}"
run_suite schedule .venv/bin/pytest -q -p no:cacheprovider "${SCHEDULE[@]}"
run_suite vm .venv/bin/pytest -q -p no:cacheprovider tests/vm
# issue 11: the benchmarks' quick mode, so their code cannot rot (no timing is checked;
# --no-write leaves docs/benchmarks.md alone)
run_suite bench bash -c '.venv/bin/python -m bench.metadata --quick --no-write >/dev/null \
    && .venv/bin/python -m bench.startup --quick --no-write >/dev/null \
    && .venv/bin/python -m bench.fleet --quick --no-write >/dev/null \
    && .venv/bin/python -m bench.hops --quick --no-write >/dev/null \
    && .venv/bin/python -m bench.disks --quick --no-write >/dev/null \
    && .venv/bin/python -m bench.memory_dd --quick --no-write >/dev/null \
    && .venv/bin/python -m bench.plots --no-write >/dev/null \
    && .venv/bin/python -m bench.libvirt --quick --no-write >/dev/null'

echo
echo "===== suite times ====="
for i in "${!names[@]}"; do
    printf '%-12s %5s s  %s\n' "${names[$i]}" "${secs[$i]}" "${results[$i]}"
done
printf '%-12s %5s s\n' total "$(( $(date +%s) - t0 ))"
exit $failed
