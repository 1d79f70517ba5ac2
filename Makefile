# Two commands on a fresh machine:  `make run`  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STUDIO_DATA_DIR ?= $(HOME)/.studio
PORT ?= 7860

.PHONY: setup system-deps run test test-fast clean-venv

# Debian packages first (scripts/system-deps.sh): installed when root or passwordless sudo,
# else `make test` stops here with the one apt-get command to run. `make run` needs no browser:
# it only wants libusb-1.0-0 (open3d baselines) and starts without it, with a warning. `make test`
# also wants chromium, caddy, postgresql and redis-server (tests/test_scale.py starts throwaway
# PostgreSQL and Redis servers on loopback; CI=1 makes them required).
DEPS_FOR ?= run
test test-fast: DEPS_FOR = test

setup: system-deps $(VENV)/.installed

system-deps:
	@VENV=$(VENV) bash scripts/system-deps.sh $(DEPS_FOR)

# torch first, from the pinned CPU wheel (CUDA users: install their CUDA torch build first);
# the project's own range is satisfied by it, so nothing pulls another torch.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

run: setup
	$(PY) launch.py --host 127.0.0.1 --port $(PORT) --data-dir $(STUDIO_DATA_DIR)

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not browser and not slow"

clean-venv:
	rm -rf $(VENV)
