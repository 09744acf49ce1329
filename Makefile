# The two commands of the README: `make demo` and `make test`.
.PHONY: setup demo test test-unit lint bench lab lab-build

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

test:
	bash scripts/test.sh

test-unit: setup
	.venv/bin/pytest -q tests/unit

# every benchmark's full mode (docs/benchmarks.md, plots under docs/plots; ~45 min)
bench: setup
	.venv/bin/python -m bench

lint: setup
	.venv/bin/ruff check domsnap workers tasks schemas tests bench
	.venv/bin/mypy

# The nested Xen lab (lab/xen/README.md): build (cached under .cache/lab), boot, smoke cycle.
lab-build:
	bash lab/xen/build.sh >/dev/null

lab:
	bash lab/xen/run.sh
