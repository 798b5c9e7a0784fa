# The two commands the README starts with: `make demo` and `make test`.
# Both (re)create the virtual environment when pyproject files change.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.frip-installed

.PHONY: demo test lint softhsm postgres browser clean

$(STAMP): pyproject.toml adapters/frip-adapter-acme/pyproject.toml Makefile scripts/build_pyfhel_wheel.py
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "frip-engine needs Python 3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[he,arcface,extractors,pkcs11,cluster,demo,serve,postgres,ray,dev]"
	# insightface pins the GUI opencv-python; its real needs are in the arcface extra.
	$(BIN)/python -m pip install --quiet --no-deps "insightface==2.1"
	$(BIN)/python -m pip install --quiet -e adapters/frip-adapter-acme
	# Pyfhel (HE backend pyfhel) has no cp311 wheel: built once from its sdist, offline from
	# GitHub, into ~/.cache/frip-engine/wheels (3-4 min); a failure leaves only it unusable.
	$(BIN)/python scripts/build_pyfhel_wheel.py --install || echo "frip: WARNING: Pyfhel could \
	not be built (reason above): HE backend 'pyfhel' is unavailable, see 'frip plugins'"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/frip demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The PKCS#11 tests need SoftHSM2: installed here when missing and run as root; otherwise
# those tests are skipped and say why. They make their own throw-away token.
softhsm:
	@command -v softhsm2-util >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2; \
	  else echo "softhsm2 is missing and this is not root: PKCS#11 tests will be skipped"; fi; }

# The postgres gallery-store tests start a throw-away PostgreSQL server (Debian's postgresql
# package, run as its unprivileged postgres user when root): installed here when missing and
# run as root; otherwise those tests are skipped and say why.
postgres:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	  else echo "postgresql is missing and this is not root: postgres store tests will be skipped"; fi; }

# The portal's browser tests drive Debian's headless Chromium through Playwright (never a
# downloaded browser): installed here when missing and run as root; otherwise skipped.
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      chromium chromium-driver; \
	  else echo "chromium is missing and this is not root: browser tests will be skipped"; fi; }

test: lint softhsm postgres browser
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) results .pytest_cache .mypy_cache .ruff_cache
