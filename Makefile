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

.PHONY: demo-xray2ct
demo-xray2ct: $(STAMP)  # X-ray -> CT: synthetic cohort, prep with a test split, ViT + lift, baselines (<= 15 min, 2 cores)
	$(PY) -m ctpipe.demo_xray2ct

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m benchmarks.fbp

clean:
	rm -rf $(VENV) build *.egg-info data/demo runs/demo results/demo
