"""Fixtures shared by every test folder (helpers live in conftests and plugins, never in a test
module, and no test module or conftest imports another).

Here: the open hand model, the MediaPipe task file, and the tiny random VLM / LLM builders.
Registered plugins: ``tests/plugins/comfyui.py`` (the real-ComfyUI fixtures of ``tests/nodes``,
``tests/server`` and ``tests/browser``: ``comfyui``, ``server``, ``tiny_models``, ...) and
``tests/plugins/mano.py`` (synthetic MANO files: ``mano_pair``, ``mano_files``). Heavy imports
stay inside the fixtures.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

pytest_plugins = ("tests.plugins.comfyui", "tests.plugins.mano")

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def anny_model():
    """The open hand model, from the shared SesaHand cache (built once, 1-3 minutes, if absent)."""
    from sesahand.hands import load_hand_model

    return load_hand_model("anny")


@pytest.fixture(scope="session")
def task_file() -> str:
    """Path of the hand_landmarker.task; skips when mediapipe or the file is missing."""
    try:
        import mediapipe  # noqa: F401
    except ImportError:
        pytest.skip("mediapipe is not installed (pip install 'mediapipe>=0.10.30'): real-detector "
                    "tests skipped")
    path = os.environ.get("SESAHAND_HAND_LANDMARKER")
    if not path or not os.path.isfile(path):
        pytest.skip("SESAHAND_HAND_LANDMARKER does not name a hand_landmarker.task file (build it with "
                    "`python -m sesahand qa-model --source mediapipe-0.10.21-*.whl --out FILE`, or "
                    "`make test-models`): real-detector tests skipped")
    return path


@pytest.fixture(scope="session")
def tiny_vlm():
    """The module ``tests/semantics/tiny_vlm.py`` (tiny random VLM / LLM builders, tokenizer),
    loaded by path (it is also the semantics benchmark's model builder)."""
    spec = importlib.util.spec_from_file_location("sesahand_tests_tiny_vlm", HERE / "semantics" / "tiny_vlm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
