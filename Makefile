# Two commands on a fresh machine: `make demo` (the whole recipe) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_DIR ?= runs/demo
SPATIAL_RUN_DIR ?= runs/demo-spatial
# torch first, pinned: on the reference machines pip takes the CPU build of 2.13.0 from local
# disk, while an unpinned torch (asked for by another package) would fetch a multi-GB CUDA
# build. Elsewhere choose your build, e.g.
#   make demo TORCH='torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu'
TORCH ?= torch==2.13.0

.PHONY: demo demo-scratch demo-spatial smoke test lint venv clean voices-apt voices-npm pretrain browser-apt

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# The shipped pretrained separator adapted by TS-MixIT to reverberant rooms.
demo: venv
	$(BIN)/tsmixit recipe --config configs/demo.yaml --run-dir $(RUN_DIR)

# TS-MixIT from random weights on the dry embedded corpus (the demo before the pretrained model).
demo-scratch: venv
	$(BIN)/tsmixit recipe --config configs/demo-scratch.yaml --run-dir runs/demo-scratch

# Multi-channel TS-MixIT (4 reverberant microphones) and its microphone-0 companion.
demo-spatial: venv
	$(BIN)/tsmixit recipe --config configs/demo-spatial.yaml --run-dir $(SPATIAL_RUN_DIR)

# Debian packages of recorded voices (training sources of the pretraining corpus) and of the
# real-voice dev set (measuring only). Without them, those sources' tests skip.
VOICE_DEBS := flite asterisk-core-sounds-en-wav asterisk-core-sounds-es-wav \
	asterisk-core-sounds-fr-wav asterisk-core-sounds-it-wav asterisk-core-sounds-ru-wav \
	asterisk-prompt-it-menardi-wav festival festvox-ca-ona-hts festvox-czech-dita \
	festvox-czech-krb festvox-czech-machac festvox-czech-ph festvox-itapc16k festvox-italp16k \
	festvox-kdlpc16k festvox-ru festvox-suopuhe-lj festvox-suopuhe-mv klettres-data gcin-voice
DEV_SET_DEBS := asterisk-prompt-es-co asterisk-prompt-fr-armelle

voices-apt:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(VOICE_DEBS) $(DEV_SET_DEBS)

# The other 49 voices of Kokoro-82M (voices/kokoro_js.py): only the voice files of the npm
# package kokoro-js, unpacked into the venv; none of its JavaScript runs.
KOKORO_JS := kokoro-js@1.2.1
KOKORO_JS_DIR := $(VENV)/share/kokoro-js

voices-npm: venv
	rm -rf $(KOKORO_JS_DIR).tmp && mkdir -p $(KOKORO_JS_DIR).tmp
	cd $(KOKORO_JS_DIR).tmp && npm pack --silent $(KOKORO_JS) > /dev/null && \
		tar -xzf kokoro-js-*.tgz package/voices package/LICENSE package/package.json && \
		rm kokoro-js-*.tgz
	rm -rf $(KOKORO_JS_DIR) && mv $(KOKORO_JS_DIR).tmp $(KOKORO_JS_DIR)

# Headless Chromium for the browser test of `tsmixit serve` (it skips without); installed
# only when missing.
BROWSER_DEBS := chromium chromium-driver

browser-apt:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(BROWSER_DEBS); }

# Pretraining (not part of the demo): days on a CPU, minutes on a GPU; rerun to resume.
pretrain: venv
	$(BIN)/tsmixit pretrain --config configs/pretrain.yaml --run-dir runs/pretrain

smoke: venv
	$(BIN)/tsmixit recipe --config configs/demo.yaml --run-dir runs/smoke --quick

lint: venv
	$(BIN)/ruff check src tests benchmarks

test: venv lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
