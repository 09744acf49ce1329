"""``python -m domsnap``: the ``domsnap`` command (the console script's entry point)."""

from __future__ import annotations

from domsnap.cli import main

main(prog_name="domsnap")
