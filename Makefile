# respipe: `make install` then `make test`. See README.md.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
DATA   ?= data/records
# Debian packages FFCV compiles and links against (shared/FINDINGS.md).
FFCV_DEBS := pkg-config libturbojpeg0-dev libopencv-dev

.PHONY: install test test-fast quickstart dataset-cifar10 dataset-cifar100 dataset-imagenet clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	bash .ci/ffcv-debs.sh $(FFCV_DEBS)
	# FFCV 1.0.2 only ships an sdist that future setuptools will refuse: build it with ours.
	$(PIP) install -q "setuptools>=68,<81" wheel numpy pkgconfig
	$(PIP) install -q --no-build-isolation ffcv==1.0.2
	$(PIP) install -q -e '.[test,dali,ffcv]'
	$(PY) -c "import torch, torchvision, ffcv, nvidia.dali; print('installed: torch', torch.__version__, 'torchvision', torchvision.__version__, 'ffcv', ffcv.__version__, 'dali', nvidia.dali.__version__)"
	touch $@

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

dataset-cifar10: install
	$(PY) tools/convert.py cifar10 $(if $(CIFAR10_SRC),--src $(CIFAR10_SRC)) --out $(DATA)

dataset-cifar100: install
	$(PY) tools/convert.py cifar100 $(if $(CIFAR100_SRC),--src $(CIFAR100_SRC)) --out $(DATA)

dataset-imagenet: install
	$(PY) tools/convert.py imagenet --src $(IMAGENET_SRC) --out $(DATA)

clean:
	rm -rf $(VENV) .pytest_cache

quickstart: install
	$(PY) train/run.py configs/quickstart.yaml
