"""Real-browser tier: Debian's Chromium driven by Playwright (PyPI) against the session's
shared headless ComfyUI with this pack (the ``server`` fixture of tests/plugins/comfyui.py, the
same one tests/server uses).

Skips with a loud reason when Chromium (``$SESAHAND_CHROMIUM``, default /usr/bin/chromium),
the ``playwright`` package or ComfyUI (``$COMFYUI_PATH``, default ~/ComfyUI) is missing.
Playwright never downloads a browser here: it drives the system Chromium. Screenshots go to
``$SESAHAND_BROWSER_SHOTS`` (default ``build/browser-screenshots``) for a person to look at.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
COMFYUI_PATH = Path(os.environ.get("COMFYUI_PATH", "~/ComfyUI")).expanduser().resolve()
CHROMIUM = Path(os.environ.get("SESAHAND_CHROMIUM", "/usr/bin/chromium"))
SHOTS = Path(os.environ.get("SESAHAND_BROWSER_SHOTS", REPO / "build" / "browser-screenshots"))
#: Chromium flags for a sandbox-less, offline, headless CI machine (SwiftShader WebGL).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _skip(reason: str):
    message = f"=== SKIPPED: the real-browser tier: {reason} ==="
    warnings.warn(message)
    print("\n" + message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def chromium():
    """A Playwright Chromium browser running the system's Chromium.

    Module-scoped: Playwright's sync API keeps an asyncio loop running in this thread while it
    is open, which would break later tests that call ``asyncio.run`` (the in-process ComfyUI
    tier), so it is closed when the module's tests are done."""
    if not CHROMIUM.is_file():
        _skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set SESAHAND_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip("the playwright package is missing (pip install -r requirements-dev.txt)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def comfy_server(request):
    """Base URL of the shared headless CPU ComfyUI with the pack loaded (``server``).

    Take it before ``chromium``: the shared server's first use imports ComfyUI in-process with
    ``asyncio.run``, which cannot run while Playwright's loop runs in this thread."""
    if not (COMFYUI_PATH / "main.py").is_file():
        _skip(f"no ComfyUI at {COMFYUI_PATH} (set COMFYUI_PATH)")
    base = request.getfixturevalue("server").url
    # A fresh user sees the template browser first; a returning one the canvas.
    requests.post(base + "/settings/Comfy.TutorialCompleted", json=True, timeout=30).raise_for_status()
    return base


@pytest.fixture(scope="session")
def shots() -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS
