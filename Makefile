# The two set-up commands of the README. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade --quiet pip
	$(VENV)/bin/pip install -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/manifold-aps demo --output-dir demo_output

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q --doctest-modules manifold_aps climate tests; \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m slow tests

clean:
	rm -rf $(VENV) demo_output .pytest_cache
