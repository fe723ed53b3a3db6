# The two set-up commands of the README (demo, test), and docs and lint. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo demo-models test test-slow docs lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade --quiet pip
	$(VENV)/bin/pip install -c constraints.txt -e '.[dev,docs]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/manifold-aps demo --output-dir demo_output

# The learned engine `make demo` scores beside the Gaussian (manifold_aps/data/demo_models/): a
# diffusion prior and its APS flow trained on the shipped sample's first 558 hours (the demo's
# training hours) by the project's own commands, then stripped to an inference copy (the flow's
# checkpoint embeds the prior's weights). About 10 minutes on 2 CPU cores.
DEMO_SAMPLE := manifold_aps/data/era5_t2m_uk_2019-03.nc
DEMO_RUNS := runs/demo-models
demo-models: $(STAMP)
	$(VENV)/bin/manifold-aps train-prior --input $(DEMO_SAMPLE) --var t2m \
	    --fit-period 2019-03-01T00:2019-03-24T05 --steps 2000 --seed 0 --quiet \
	    --out $(DEMO_RUNS)/prior --overwrite
	$(VENV)/bin/manifold-aps distill --prior $(DEMO_RUNS)/prior/checkpoint.pt --masks random \
	    --dense-limit 1000 --variance-modes 64 \
	    --steps 600 --seed 0 --quiet --out $(DEMO_RUNS)/aps --overwrite
	$(VENV)/bin/manifold-aps export $(DEMO_RUNS)/aps/checkpoint.pt \
	    --out manifold_aps/data/demo_models/aps-t2m-uk.pt --overwrite

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q --durations=15 --doctest-modules manifold_aps climate tests; \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m slow tests

# the documentation site (mkdocs.yml): any warning (broken link, unreadable docstring) fails it
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) demo_output .pytest_cache site
