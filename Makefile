# Two commands do all set-up on a fresh clone:  `make demo`  and  `make test`.
.PHONY: install demo test lint bench docs

install:
	bash scripts/install.sh

demo: install
	HF_HUB_OFFLINE=1 steer demo

test: install
	HF_HUB_OFFLINE=1 python -m pytest -q

lint:
	ruff check . && ruff format --check .

bench:
	HF_HUB_OFFLINE=1 python benchmarks/bench_speed.py

docs: install
	mkdocs build --strict
