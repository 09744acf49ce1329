"""Host side of the lab's ``capture`` suite: copy what ``lab/xen/dom0/capture.py`` left
in ``<run>/out/capture/`` into ``tests/fixtures/xl/`` under fixed names, binary stream
head/tail as ``xxd`` hex dumps (``xxd -r FILE`` gives the bytes back).

Usage: python3 lab/xen/capture_fixtures.py RUN_DIR [--prefix P] [--only CASE,...]
Prints each file written with its size; refuses a fixture over 64 KiB.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEST = REPO / "tests" / "fixtures" / "xl"
LIMIT = 64 * 1024

# source name in out/capture -> fixture name (without the prefix)
TEXT = {
    "live-vvv.stderr": "migrate-vvv.stderr.txt",
    "live-vvv.stdout": "migrate-vvv.stdout.txt",
    "live-vvv.summary.txt": "migrate-vvv.stream-summary.txt",
    "live-vvv.config.json": "migrate-vvv.stream-config.json",
    "live-vvv.list-during.txt": "migrate-vvv.list-during.txt",
    "live-vvv.list-after.txt": "migrate-vvv.list-after.txt",
    "live-vvv.list-after-ticks.txt": "migrate-vvv.list-after-ticks.txt",
    "live-vvv.xl-capdom.log": "migrate-vvv.xl-domain.log",
    "live-vvv.recv.json": "migrate-vvv.receiver-report.json",
    "before.xl-capdom.log": "migrate-before.xl-domain.log",
    "live-quiet.stderr": "migrate-quiet.stderr.txt",
    "live-quiet.stdout": "migrate-quiet.stdout.txt",
    "kill-mid-stream.stderr": "migrate-receiver-killed.stderr.txt",
    "kill-mid-stream.stdout": "migrate-receiver-killed.stdout.txt",
    "kill-mid-stream.list-after.txt": "migrate-receiver-killed.list-after.txt",
    "live-after-kill.stderr": "migrate-after-kill.stderr.txt",
    "bad-banner.stderr": "migrate-bad-banner.stderr.txt",
    "bad-banner.stdout": "migrate-bad-banner.stdout.txt",
    "bad-banner.list-after.txt": "migrate-bad-banner.list-after.txt",
    "paused.stderr": "migrate-paused.stderr.txt",
    "paused.stdout": "migrate-paused.stdout.txt",
    "paused.list-before.txt": "migrate-paused.list-before.txt",
    "paused.list-after-migrate.txt": "migrate-paused.list-after.txt",
    "save-p.stderr": "save-p-vvv.stderr.txt",
    "save-p.stdout": "save-p-vvv.stdout.txt",
    "save-p.summary.txt": "save-p.stream-summary.txt",
    "save-p.list-after-save.txt": "save-p.list-after-save.txt",
    "restore.stderr": "restore-migrate-stream.stderr.txt",
    "restore.stdout": "restore-migrate-stream.stdout.txt",
    "restore.list-after-ticks.txt": "restore-migrate-stream.list-after.txt",
}
BINARY = {"live-vvv.head.bin": "migrate-vvv.stream-head.hex",
          "live-vvv.tail.bin": "migrate-vvv.stream-tail.hex"}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--prefix", default="")
    ap.add_argument("--only", default="", help="comma list of source names")
    args = ap.parse_args()
    src = args.run / "out" / "capture"
    only = set(filter(None, args.only.split(",")))
    codes = []
    for rc in sorted(src.glob("*.rc")):
        codes.append(f"{rc.stem} {rc.read_text().strip()}")
    written = []
    for name, fixture in {**TEXT, **BINARY}.items():
        if only and name not in only:
            continue
        f = src / name
        if not f.exists():
            print(f"missing: {name}", file=sys.stderr)
            continue
        dest = DEST / (args.prefix + fixture)
        if name in BINARY:
            dest.write_text(subprocess.run(["xxd", str(f)], capture_output=True, text=True,
                                           check=True).stdout)
        else:
            shutil.copyfile(f, dest)
        size = dest.stat().st_size
        if size > LIMIT:
            dest.unlink()
            print(f"TOO BIG ({size} B), not kept: {dest.name}", file=sys.stderr)
            continue
        written.append(f"{dest.name} {size}")
    (DEST / f"{args.prefix}migrate-exit-codes.txt").write_text("\n".join(codes) + "\n")
    print("\n".join(written))
    print("exit codes:", ", ".join(codes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
