# Two commands for a fresh machine: `make demo` and `make test` (each creates .venv when missing).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ctpipe-installed

.PHONY: demo test bench install clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m ctpipe demo

.PHONY: demo-unet
demo-unet: $(STAMP)  # experiment 4 (frozen FBP + UNet) on the demo's data (created when missing)
	$(PY) -m ctpipe.demo_unet

.PHONY: demo-phases
demo-phases: $(STAMP)  # pix2pix: synthetic phases -> prep -> training -> folder inference (results/demo_phases/)
	$(PY) -m ctpipe.demo_phases

# tests/test_report_html.py renders report.html in Debian's headless Chromium: installed here when missing
# (as root, or through passwordless sudo); nothing happens when a chromium is already on the PATH.
.PHONY: browser
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO=sudo; else \
	    echo "make test needs chromium (Debian package): run 'sudo apt-get install -y --no-install-recommends chromium'" >&2; \
	    exit 1; fi; \
	  $$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; }

.PHONY: demo-xray2ct
demo-xray2ct: $(STAMP)  # X-ray -> CT: synthetic cohort, prep with a test split, ViT + lift, baselines (<= 15 min, 2 cores)
	$(PY) -m ctpipe.demo_xray2ct

test: $(STAMP) browser
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m benchmarks.fbp

.PHONY: gpu-check
gpu-check: $(STAMP)  # the GPU acceptance run (< 8 min on one GPU); without CUDA a CPU dry run of the same paths
	$(PY) -m benchmarks.gpu_check

clean:
	rm -rf $(VENV) build *.egg-info data/demo runs/demo results/demo data/demo_phases runs/demo_phases results/demo_phases
