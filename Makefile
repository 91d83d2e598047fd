# xapi.delta_backup developer entry points. `make test` and `make demo` work on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := $(CURDIR)/.venv
BUILD := $(CURDIR)/.build
# ansible-test needs the collection under a path ending in ansible_collections/<namespace>/<name>.
COLLECTIONS_ROOT := $(BUILD)/collections
COLLECTION := $(COLLECTIONS_ROOT)/ansible_collections/xapi/delta_backup
# ansible-test keeps its virtualenvs and caches under $$HOME/.ansible/test: keep them in the build tree.
TEST_HOME := $(BUILD)/home
BIN := $(VENV)/bin
# pip warns about the machine's unreachable extra index folders; those lines are noise.
# The braces keep the filter's own status out of the pipeline's (pipefail reports the real command's).
PIP_QUIET := { grep -v -e "is ignored: it is neither a file nor a directory" || true; }
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PYTHONDONTWRITEBYTECODE := 1

# What `make test` runs, in order. Each step fails loudly. `coverage` reports what `units` measured.
TEST_STEPS := ruff changelog-lint docs-lint sanity units pytest pytest-xcp-ng-8.2 lint molecule coverage
# Where the coverage step writes its report; `make test` quotes the total from it.
COVERAGE_REPORT := $(BUILD)/coverage-report.txt

.PHONY: help venv sysdeps layout ruff changelog-lint docs-lint sanity units coverage pytest pytest-xcp-ng-8.2 lint molecule test demo clean lock

help:
	@echo "make test   - set up everything and run every check and test suite (ruff, changelog and docs lint, sanity,"
	@echo "              units with coverage, pytest suites, ansible-lint, molecule); fails if a process outlives them"
	@echo "make demo   - set up everything and run a whole backup lifecycle on the bundled simulator"
	@echo "make clean  - remove the virtualenv and the build tree"

# System tools the tests use as independent VHD readers, rsync for the collection layout, and Node.js with npm
# to run Xen Orchestra's own VHD merge (tests/xo_merge) on our chains.
sysdeps:
	@missing=""; \
	command -v qemu-img >/dev/null || missing="$$missing qemu-utils"; \
	command -v rsync >/dev/null || missing="$$missing rsync"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing system packages:$$missing (install them as root)"; exit 1; fi; \
	  echo "installing system packages:$$missing"; \
	  apt-get install -y -q $$missing >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q $$missing >/dev/null; }; \
	fi

# The virtualenv is rebuilt only when the lock file changes.
$(VENV)/.installed: requirements/dev.lock.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q 'pip==24.2' 2>&1 | $(PIP_QUIET)
	$(BIN)/pip install -q -r requirements/dev.lock.txt 2>&1 | $(PIP_QUIET)
	$(BIN)/python -c "import ansible, XenAPI, blake3, pyvhdi, hypothesis, jmespath, yaml, xdist, coverage"
	$(BIN)/ruff --version >/dev/null
	touch $@

venv: $(VENV)/.installed

# Mirror the working tree (what git would track: ignored files left out) into the
# ansible_collections path. ansible-test's own output there is kept between runs.
layout: venv
	mkdir -p $(COLLECTION) $(TEST_HOME)
	rsync -a --delete --exclude=/.git --exclude=/.venv --exclude=/.build --filter=':- .gitignore' ./ $(COLLECTION)/
	# ansible-test lists content through git: give the copy a repository of its own (files stay untracked).
	[ -d $(COLLECTION)/.git ] || git -C $(COLLECTION) init -q
	HOME=$(TEST_HOME) $(BIN)/python tools/prepare_ansible_test.py --home $(TEST_HOME) --wheels $(BUILD)/wheels 2>&1 | $(PIP_QUIET)

# Python style and likely bugs (settings in pyproject.toml), on the working tree.
ruff: venv
	$(BIN)/ruff check --no-cache plugins tests tools benchmarks demo

changelog-lint: venv
	$(BIN)/antsibull-changelog lint

# The docs as the Ansible docsite would build them: plugin and role docs, their markup and references.
docs-lint: layout
	cd $(COLLECTION) && PATH=$(BIN):$$PATH ANSIBLE_COLLECTIONS_PATH=$(COLLECTIONS_ROOT) $(BIN)/antsibull-docs lint-collection-docs --plugin-docs .

sanity: layout
	cd $(COLLECTION) && HOME=$(TEST_HOME) $(BIN)/ansible-test sanity --color no --python 3.11 --requirements 2>&1 | $(PIP_QUIET)

# The unit suites measure coverage; the `coverage` step reports it (stale data is erased first).
units: layout
	rm -rf $(COLLECTION)/tests/output/coverage
	cd $(COLLECTION) && HOME=$(TEST_HOME) $(BIN)/ansible-test units --color no --python 3.11 --requirements --num-workers 2 --coverage 2>&1 | $(PIP_QUIET)

# Line and branch coverage of plugins/ by the unit suites, per file, then the total (tools/coverage_report.py
# says why not `ansible-test coverage report`).
coverage: layout
	cd $(COLLECTION) && $(BIN)/python tools/coverage_report.py --combined $(BUILD)/units.coverage | tee $(COVERAGE_REPORT)

# Suites that ansible-test does not drive (simulator, integration through ansible).
PYTEST_SUITES := $(wildcard tests/simulator tests/integration)
pytest: layout
	@if [ -z "$(PYTEST_SUITES)" ]; then echo "no pytest suites yet"; exit 0; fi
	cd $(COLLECTION) && PYTHONPATH=$(COLLECTIONS_ROOT):$(COLLECTION)/tests ANSIBLE_COLLECTIONS_PATH=$(COLLECTIONS_ROOT) \
	  $(BIN)/python -m pytest -p no:cacheprovider -n 2 --timeout 900 $(PYTEST_SUITES)

# The backup lifecycle suites again on a simulated XCP-ng 8.2 LTS pool (xapi 1.249: no VM.snapshot ignore_vdis,
# an older datamodel): every pool those tests load without an xapi section gets that profile.
PROFILE_SUITES := $(addprefix tests/integration/,test_delta_export.py test_merge_seed_restore.py test_roles.py \
  test_vm_modules.py test_backup_info.py test_disk_growth.py test_restore_suspended.py test_health_check_agent.py test_restore_xo_point.py)
pytest-xcp-ng-8.2: layout
	cd $(COLLECTION) && XAPISIM_PROFILE=xcp-ng-8.2 PYTHONPATH=$(COLLECTIONS_ROOT):$(COLLECTION)/tests ANSIBLE_COLLECTIONS_PATH=$(COLLECTIONS_ROOT) \
	  $(BIN)/python -m pytest -p no:cacheprovider -n 2 --timeout 900 $(PROFILE_SUITES)

# ansible-lint (production profile) on what users run, offline.
lint: layout
	cd $(COLLECTION) && PATH=$(BIN):$$PATH ANSIBLE_COLLECTIONS_PATH=$(COLLECTIONS_ROOT) $(BIN)/ansible-lint --offline roles playbooks extensions awx/project

# Molecule scenarios of the roles (delegated driver on localhost; each starts its own simulator).
molecule: layout
	cd $(COLLECTION) && PATH=$(BIN):$$PATH ANSIBLE_COLLECTIONS_PATH=$(COLLECTIONS_ROOT) $(BIN)/molecule test --all

# The steps run under tools/run_without_leftovers.py: a process they started that is still running
# when they end (a simulator, a playbook, a pytest worker) is listed, ended, and fails the run.
test: sysdeps venv
	rm -f $(COVERAGE_REPORT)
	$(BIN)/python tools/run_without_leftovers.py -- $(MAKE) --no-print-directory --keep-going $(TEST_STEPS)
	@echo "make test: every suite passed, no process left running; $$(tail -n 1 $(COVERAGE_REPORT))"

# A whole backup lifecycle through the real playbooks against the bundled simulator (demo/run_demo.py).
# `make demo POOL=my-pool.yml XAPI_PROFILE=xcp-ng-8.2` runs it on another pool file and XAPI version.
demo: sysdeps layout
	$(BIN)/python demo/run_demo.py --collections-root $(COLLECTIONS_ROOT) $(if $(POOL),--pool $(POOL)) $(if $(XAPI_PROFILE),--xapi-profile $(XAPI_PROFILE))

lock:
	rm -rf $(BUILD)/lockvenv && $(PYTHON) -m venv $(BUILD)/lockvenv
	$(BUILD)/lockvenv/bin/pip install -q -r requirements/dev.in 2>&1 | $(PIP_QUIET)
	$(BUILD)/lockvenv/bin/pip freeze --all --exclude pip > requirements/dev.lock.txt

clean:
	rm -rf $(VENV) $(BUILD)
