# respipe: `make install` then `make test`. See README.md ("Set up", "Dependencies").
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
DATA   ?= data/records
# Debian packages FFCV compiles and links against at run time (README.md, "Dependencies").
FFCV_DEBS := pkg-config libturbojpeg0-dev libopencv-dev

.PHONY: install lint test test-fast quickstart reproduce-cifar bench gpu-check gpu-prepare clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	bash .ci/ffcv-debs.sh $(FFCV_DEBS)
	# FFCV 1.0.2 only ships an sdist that future setuptools will refuse: build it with ours,
	# patched to decode JPEGs with the accurate DCT (its fast one shifts colours; see the script).
	$(PIP) install -q "setuptools>=68,<81" wheel numpy pkgconfig
	bash .ci/ffcv-install.sh $(PIP) build/ffcv
	# Dependencies only: the code stays in this folder (pyproject.toml, [tool.setuptools]).
	$(PIP) install -q '.[test,dali,ffcv]'
	$(PY) -c "import importlib.metadata as m, ffcv, nvidia.dali; print('installed:', *(f'{p} {m.version(p)}' for p in ('torch', 'torchvision', 'ffcv', 'nvidia-dali-cuda130')))"
	$(PY) .ci/ffcv-check.py
	touch $@

lint: install
	$(VENV)/bin/ruff check .

test: install
	$(PY) -m pytest -q

# Every module, without the long tests (real CIFAR-10, many-epoch statistics, kill/resume).
test-fast: install
	$(PY) -m pytest -q -m "not slow"

# Records of any dataset of records/datasets.py: make dataset-NAME plus its source variable,
# CIFAR10_SRC=... / CIFAR100_SRC=... (empty: download) / IMAGENET_SRC=... / folder: SRC=DIR
# NAME=NAME. tools/convert.py reads that variable from the environment (make exports it) and
# says which one to set when it is missing. DATA=DIR: where the records go.
dataset-%: install
	$(PY) tools/convert.py $* --out $(DATA)

# The main job: CIFAR-10 records if they are missing (download, or CIFAR10_SRC=...), then
# ResNet-20 for 900 iterations in runs/quickstart; prints where the curves and the summary are.
quickstart: install
	test -f $(DATA)/cifar10/manifest.json || $(MAKE) dataset-cifar10
	$(PY) train/run.py configs/quickstart.yaml data.root=$(DATA)/cifar10 run.name=quickstart $(ARGS)

# Every backend alone and end to end, trainer vs bare loop, layouts, converter vs PIL: builds
# its own ImageNet-format photo set, uses CIFAR-10 when converted. Writes bench/results/.
bench: install
	$(PY) tools/bench.py $(if $(wildcard $(DATA)/cifar10/manifest.json),--cifar $(DATA)/cifar10) $(ARGS)

# On a GPU machine (without a venv: python3): CUDA tests, the benchmark, the ResNet-32 paper
# schedule (tools/gpu_check.py). Without scikit-image there: `make gpu-prepare` where it is, and
# copy build/photo-sources along; CIFAR10_TAR: the CIFAR-10 tarball. ARGS=--smoke: CPU dry run.
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	$(GPU_PY) tools/gpu_check.py $(if $(CIFAR10_TAR),--cifar-tar $(CIFAR10_TAR)) $(ARGS)

gpu-prepare: install
	$(PY) tools/converter/photos.py --export-sources build/photo-sources

# The paper's CIFAR-10 table and Figure 6: ResNet-20..110 and plain-20..110 one after another on
# whatever device there is, resumable (run it again to continue); writes runs/reproduce-cifar/
# {table.md,figure6_plain.png,figure6_resnet.png}. ARGS="--budget 20": a CPU smoke run, kept
# apart in runs/reproduce-cifar-budget20/.
reproduce-cifar: install
	test -f $(DATA)/cifar10/manifest.json || $(MAKE) dataset-cifar10
	$(PY) tools/reproduce_cifar.py --data $(DATA)/cifar10 $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
