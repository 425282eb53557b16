# Two commands on a fresh machine: `make demo` and `make test`. Both install what they need.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: venv demo test bench lint clean mosquitto flower
FLOWER := .venv-flower

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# The CPU build of torch 2.13.0 lies on this machine's disk; pin it first so
	# nothing else can pull a multi-GB CUDA build.
	$(PIP) install --quiet torch==2.13.0
	# CrypTen's metadata requires the deprecated `sklearn` package: install it
	# without dependencies; its real dependencies are in pyproject.toml.
	$(PIP) install --quiet --no-deps crypten==0.4.1
	# --no-warn-conflicts: pip would report CrypTen's unmet metadata (sklearn, torchvision,
	# tensorboard, future) as an ERROR; none of them is imported by what Confidant uses.
	$(PIP) install --quiet --no-warn-conflicts -e '.[test]'
	touch $(STAMP)

# Debian's mosquitto, so broker tests run against the real thing.
mosquitto:
	@if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's mosquitto"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq mosquitto >/dev/null; \
	  else echo "mosquitto missing and no apt-get: Mosquitto tests will be skipped"; fi; \
	fi

demo: venv
	$(PY) run_parties.py demo

test: venv mosquitto
	$(PY) -m pytest -q

bench: venv mosquitto flower
	$(PY) -m benchmarks

# Flower (flwr), in a venv of its own: the anchor of benchmarks/bench_secagg.py. Its
# dependencies (grpcio, protobuf, fastapi, ...) stay out of Confidant's environment.
flower: $(FLOWER)/.installed

$(FLOWER)/.installed:
	python3 -m venv $(FLOWER)
	$(FLOWER)/bin/python -m pip install --quiet flwr==1.42.0
	touch $@

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(FLOWER) runs .pytest_cache
