"""Export domsnap's data shapes as JSON Schema files for non-Python control planes.

``python -m schemas.export`` (re)writes ``schemas/json/*.schema.json``;
``python -m schemas.export --check`` writes nothing and exits 1, listing the
files that are missing or out of date (CI runs it). Output is deterministic:
sorted keys, two-space indent, trailing newline.

The schemas themselves are built without I/O (:func:`render`); only
:func:`write` and :func:`stale` touch the files.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter

from schemas.config import DomainConfig, SnapshotConfig
from schemas.models import (
    AuditEntry,
    FsckReport,
    FsckRequest,
    HostInventory,
    JobEvent,
    JobRecord,
    Request,
    SnapshotRecord,
)
from schemas.policy import Policy, PolicyRun
from schemas.summary import SnapshotSummary

BASE_ID = "https://domsnap.invalid/schemas/"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
OUT_DIR = Path(__file__).resolve().parent / "json"


def _model(model: type[BaseModel]) -> Callable[[], dict[str, Any]]:
    return model.model_json_schema


def _request() -> dict[str, Any]:
    return TypeAdapter(Request).json_schema()


# file name -> (title, schema builder)
SCHEMAS: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {
    "request.schema.json": (
        "domsnap request (create, revert or delete; discriminated by op)", _request),
    "job.schema.json": ("domsnap job record", _model(JobRecord)),
    "snapshot.schema.json": ("domsnap snapshot record", _model(SnapshotRecord)),
    "snapshot-summary.schema.json": (
        "domsnap snapshot summary (the :summaries hash: what a listing reads; null fields "
        "are left out)", lambda: TypeAdapter(SnapshotSummary).json_schema()),
    "event.schema.json": ("domsnap job event", _model(JobEvent)),
    "inventory.schema.json": ("domsnap host inventory", _model(HostInventory)),
    "snapshot-config.schema.json": ("domsnap xl.snapshot.cfg", _model(SnapshotConfig)),
    "domain-config.schema.json": ("domsnap domain config (xl.cfg subset)", _model(DomainConfig)),
    "fsck-request.schema.json": ("domsnap fsck request (task domsnap.fsck on a host queue)",
                                 _model(FsckRequest)),
    "fsck-report.schema.json": ("domsnap fsck report", _model(FsckReport)),
    "audit.schema.json": ("domsnap audit log entry", _model(AuditEntry)),
    "policy.schema.json": ("domsnap backup policy", _model(Policy)),
    "policy-run.schema.json": ("domsnap policy run (history)", _model(PolicyRun)),
}


def schema_for(filename: str) -> dict[str, Any]:
    """The JSON Schema document of one exported file (with ``$id``, ``$schema``, title)."""
    title, build = SCHEMAS[filename]
    schema = dict(build())
    schema["$id"] = BASE_ID + filename
    schema["$schema"] = JSON_SCHEMA_DIALECT
    schema["title"] = title
    return schema


def render() -> dict[str, str]:
    """File name -> exact file content, for every exported schema."""
    return {
        name: json.dumps(schema_for(name), indent=2, sort_keys=True) + "\n"
        for name in sorted(SCHEMAS)
    }


def stale(out_dir: Path = OUT_DIR) -> list[str]:
    """Names of the files in ``out_dir`` that are missing or differ from :func:`render`."""
    out: list[str] = []
    for name, text in render().items():
        path = out_dir / name
        try:
            current = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            current = None
        if current != text:
            out.append(name)
    return out


def check(out_dir: Path = OUT_DIR) -> list[str]:
    """Alias of :func:`stale`: an empty list means the exported files are up to date."""
    return stale(out_dir)


def write(out_dir: Path = OUT_DIR) -> list[str]:
    """Write every schema file that changed; returns the names written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    changed = stale(out_dir)
    rendered = render()
    for name in changed:
        path = out_dir / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(rendered[name], encoding="utf-8")
        tmp.replace(path)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m schemas.export",
        description="Write domsnap's JSON Schema files into schemas/json/.",
    )
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 listing the files that are out of date")
    parser.add_argument("--out", type=Path, default=OUT_DIR,
                        help=f"output directory (default: {OUT_DIR})")
    args = parser.parse_args(argv)
    out_dir: Path = args.out
    if args.check:
        bad = stale(out_dir)
        for name in bad:
            print(f"out of date: {out_dir / name}", file=sys.stderr)
        if bad:
            print("run: python -m schemas.export", file=sys.stderr)
            return 1
        return 0
    for name in write(out_dir):
        print(f"wrote {out_dir / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
