# chatsite: `make run` serves the app with the built-in model; `make test` runs the suite.
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
# Which tests `make test` runs (pytest -m), in how many processes (pytest-xdist; a test file stays in one).
# With DATABASE_URL and REDIS_URL set, the in-process tests run on that PostgreSQL and Redis (CI does so).
MARKERS ?= not vllm
TEST_PROCESSES ?= 2

.PHONY: install run test lint docs docs-build test-vllm browser bench bench-api bench-engine bench-stream bench-scale bench-serve bench-finetune bench-load bench-storm bench-fuzz bench-first-reply bench-logprobs bench-structured bench-page bench-vllm-client bench-compile clean

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py ensure_admin
	$(PY) manage.py ensure_builtin_model
	@echo "chatsite on http://$(HOST):$(PORT)/  (Ctrl-C to stop)"
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1} $(VENV)/bin/daphne -b $(HOST) -p $(PORT) chatsite.asgi:application

test: install browser lint
	$(PY) -m pytest tests -m "$(MARKERS)" -n $(TEST_PROCESSES) --dist loadfile --durations=15 $(PYTEST_ARGS)

# The style (ruff) and the architecture's import rules (import-linter): both configured in pyproject.toml.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	PYTHONPATH=. $(VENV)/bin/lint-imports

# The docs site (docs/, mkdocs.yml): served at http://127.0.0.1:8001; CI builds it with --strict.
docs: install
	$(VENV)/bin/mkdocs serve -a 127.0.0.1:8001

docs-build: install
	$(VENV)/bin/mkdocs build --strict

# chatsite in front of a real vLLM (CPU build, its own cached venv: tests/vllm_env.sh, 3.4 GB).
test-vllm: install
	bash tests/vllm_env.sh
	$(PY) -m pytest tests -m vllm -n $(TEST_PROCESSES) --dist loadfile --durations=8 $(PYTEST_ARGS)

# The browser tests drive Debian's Chromium (Playwright's own browser download is not used);
# the live tests of the deployed setup start redis-servers of their own, and a PostgreSQL cluster
# of their own where none answers on 127.0.0.1:5432 (installed here, before the two test processes
# could both reach for apt).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	@command -v redis-server >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql)

bench: bench-stream bench-engine bench-serve bench-api bench-scale bench-vllm-client bench-finetune bench-load bench-storm bench-fuzz bench-first-reply bench-logprobs bench-structured bench-page bench-compile
	$(PY) bench/memory.py

bench-stream: install
	$(PY) bench/stream.py

bench-engine: install
	$(PY) bench/engine.py

bench-scale: install
	bash tests/vllm_env.sh
	$(PY) bench/scale.py --model builtin
	$(PY) bench/scale.py --model smol135m

bench-serve: install
	$(PY) bench/serve.py

bench-api: install
	$(PY) bench/api.py

bench-finetune: install
	$(PY) bench/finetune.py

bench-first-reply: install
	$(PY) bench/first_reply.py

bench-logprobs: install
	$(PY) bench/logprobs.py

bench-structured: install
	$(PY) bench/structured.py

bench-page: install
	$(PY) bench/page.py

# torch.compile of a CPU decode step, eager against compiled.
bench-compile: install
	$(PY) bench/compile.py

# vLLM's own benchmark client against chatsite's API and against vLLM (the cached vLLM venv's).
bench-vllm-client: install
	bash tests/vllm_env.sh
	$(PY) bench/vllm_client.py

# Live servers on SQLite (one daphne) and on PostgreSQL + Redis (two daphnes): both must be running
# at 127.0.0.1:5432 (user postgres) and 127.0.0.1:6379; BENCH_ARGS="--backend sqlite" skips them.
BENCH_ARGS ?=

bench-load: install
	$(PY) bench/load.py $(BENCH_ARGS)

bench-storm: install
	$(PY) bench/storm.py $(BENCH_ARGS)

bench-fuzz: install
	$(PY) bench/fuzz.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var
