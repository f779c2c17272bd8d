# Two entry points for people (README): `make run` and `make test`. Each creates the virtual
# environment it needs; everything else here serves them and CI.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= config/gateway.toml

.PHONY: run test lint typecheck check clean

$(BIN)/gateway: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

## Set up and run the gateway on its embedded defaults (SQLite, Maildir, loopback, the seed's directory).
run: $(BIN)/gateway
	$(BIN)/gateway --config $(CONFIG) db upgrade
	$(BIN)/gateway --config $(CONFIG) secrets init
	$(BIN)/gateway --config $(CONFIG) directory load config/example/directory.yaml
	$(BIN)/gateway --config $(CONFIG) backoffice password ams -p makler-muster --if-missing \
		--password-file config/example/ams.password
	$(BIN)/gateway --config $(CONFIG) admin add admin --role operator --if-missing \
		--password-file config/example/admin.password
	$(BIN)/gateway --config $(CONFIG) serve

## Set up and run the whole test suite (SQLite and the PostgreSQL on 127.0.0.1:5432).
## The corpus tests read real-world mail from ../shared/corpora unless GATEWAY_TEST_CORPORA says otherwise;
## without the folder they are skipped and the summary says why (GATEWAY_REQUIRE_CORPORA=1 fails instead).
test: $(BIN)/gateway
	scripts/install-debian-packages.sh
	GATEWAY_TEST_CORPORA="$${GATEWAY_TEST_CORPORA:-$(abspath ..)/shared/corpora}" $(BIN)/pytest

lint: $(BIN)/gateway
	$(BIN)/ruff check gateway tests bench
	$(BIN)/ruff format --check gateway tests bench

typecheck: $(BIN)/gateway
	$(BIN)/mypy --strict gateway

check: lint typecheck test

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache .hypothesis
