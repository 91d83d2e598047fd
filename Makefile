# xapi.delta_backup developer entry points. `make test` and `make demo` work on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := $(CURDIR)/.venv
BUILD := $(CURDIR)/.build
# ansible-test needs the collection under a path ending in ansible_collections/<namespace>/<name>.
COLLECTION := $(BUILD)/ansible_collections/xapi/delta_backup
# ansible-test keeps its virtualenvs and caches under $HOME/.ansible/test: keep them inside the project.
TEST_HOME := $(BUILD)/home
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help venv sysdeps layout sanity units pytest test demo clean lock

help:
	@echo "make test   - set up everything and run every test suite (sanity, units, simulator, integration)"
	@echo "make demo   - (arrives with the lifecycle issue)"
	@echo "make clean  - remove the virtualenv and build tree"

# The virtualenv is rebuilt only when the lock file changes.
$(VENV)/.installed: requirements/dev.lock.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade 'pip==24.2' 2>&1 | grep -v "is ignored" || true
	$(VENV)/bin/pip install -q -r requirements/dev.lock.txt 2>&1 | grep -v "is ignored" || true
	$(VENV)/bin/python -c "import ansible, XenAPI, pyvhdi, hypothesis, jmespath"
	touch $@

venv: $(VENV)/.installed
