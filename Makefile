# Set-up and the two entry points of the README: `make demo` (the main job) and `make test`.
# Everything is installed into .venv on first use; torch is pinned here (never in requirements.txt,
# which ComfyUI installs into its own environment).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
COMFYUI_PATH ?= $(HOME)/ComfyUI
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: venv test demo bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	touch $@

# ComfyUI's own requirements (for the real-ComfyUI test tier), when a ComfyUI tree is present.
$(VENV)/.comfyui: $(VENV)/.installed
	@if [ -f "$(COMFYUI_PATH)/requirements.txt" ]; then \
		grep -v -E '^(torch|torchvision|torchaudio)([<>=~ ]|$$)' "$(COMFYUI_PATH)/requirements.txt" > $(VENV)/comfyui-requirements.txt; \
		$(PY) -m pip install -q -r $(VENV)/comfyui-requirements.txt requests && touch $@; \
	else \
		echo "No ComfyUI at $(COMFYUI_PATH): the real-ComfyUI test tier will be skipped (set COMFYUI_PATH)."; \
	fi

venv: $(VENV)/.installed $(VENV)/.comfyui

test: venv
	@[ -f "$(COMFYUI_PATH)/main.py" ] || echo "=== SKIPPED: the real-ComfyUI test tier: no ComfyUI at $(COMFYUI_PATH) (set COMFYUI_PATH, or run make demo to clone it) ==="
	COMFYUI_PATH="$(COMFYUI_PATH)" $(PY) -m pytest

# The main job in a real ComfyUI: find (or clone) it, install its requirements, run the shipped workflow.
demo: $(VENV)/.installed
	COMFYUI_PATH="$(COMFYUI_PATH)" $(PY) tools/demo.py --fetch-comfyui
	@$(MAKE) --no-print-directory $(VENV)/.comfyui
	COMFYUI_PATH="$(COMFYUI_PATH)" $(PY) tools/demo.py --out demo_out

bench: $(VENV)/.installed
	$(PY) -m pip install -q pyrender==0.1.45
	$(PY) benchmarks/bench_render.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
