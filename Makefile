# peerpull: `make demo` runs the main job, `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SYSTEM_PACKAGES := containerd docker-registry skopeo dnsmasq-base python3-bpfcc \
	linux-headers-amd64

.PHONY: install system-deps demo test unit lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev]'
	touch $@

install: $(VENV)/.installed

# Debian packages the daemon's tests and demo run against (needs root).
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@# bcc compiles against kernel headers; the nearest Debian ones (6.1) serve
	@# the syscall tracepoints of newer kernels, linked where bcc looks.
	@k=/lib/modules/$$(uname -r); \
	build=$$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1); \
	common=$$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -1); \
	if [ -n "$$build" ] && [ ! -e $$k/build ]; then \
	  mkdir -p $$k && ln -s $$build $$k/build && echo "linked $$k/build"; fi; \
	if [ -n "$$common" ] && [ ! -e $$k/source ]; then \
	  mkdir -p $$k && ln -s $$common $$k/source && echo "linked $$k/source"; fi; \
	if [ ! -d /sys/kernel/tracing/events ] && [ ! -d /sys/kernel/debug/tracing/events ]; then \
	  mount -t tracefs tracefs /sys/kernel/tracing && echo "mounted tracefs"; fi

demo: system-deps install
	$(PY) -m tests.support.demo

test: system-deps install
	$(PY) -m pytest -q

unit: install
	$(PY) -m pytest -q tests/unit

lint: install
	$(VENV)/bin/ruff check daemon transport ebpf tests bench
	$(VENV)/bin/ruff format --check daemon transport ebpf tests bench
	$(VENV)/bin/mypy daemon transport ebpf

bench: system-deps install
	$(PY) -m bench.local

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis

include Makefile.proto
PROTO_PYTHON := $(PY)
