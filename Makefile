# The two commands of the README: `make dev` and `make test`. Both build the venv first.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: dev test install demo clean fuzz

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

dev: install
	$(BIN)/relance dev

demo: install
	$(BIN)/relance demo

test: install
	bash scripts/ensure-postgres.sh
	bash scripts/ensure-chromium.sh
	$(BIN)/pytest -q -rs

# The fuzz test of `make test`, longer: 100 cases per operation (README, "Fuzzing").
fuzz: install
	RELANCE_FUZZ_EXAMPLES=$${RELANCE_FUZZ_EXAMPLES:-100} $(BIN)/pytest -q -s tests/e2e/test_fuzz.py

clean:
	rm -rf $(VENV) .relance
