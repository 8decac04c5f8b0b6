"""Real-ComfyUI test tier: ComfyUI core at ``$COMFYUI_PATH`` (default ``~/ComfyUI``), on CPU.

Every test here takes the ``comfyui`` fixture, which skips (with the reason) when ComfyUI or
its requirements are missing. The pack is loaded the way ComfyUI loads it: a ``custom_nodes``
folder holding a link to this repository, passed to ``nodes.load_custom_node``.

The open hand's model cache is shared with the library tier (``$SESAHAND_CACHE_DIR``, else
the user cache folder) so its one-off build is not repeated.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tools.comfy_server import link_pack

REPO = Path(__file__).resolve().parents[2]
COMFYUI_PATH = Path(os.environ.get("COMFYUI_PATH", "~/ComfyUI")).expanduser().resolve()


def shared_cache_dir() -> Path:
    """The SesaHand cache the library tier uses too (see ``sesahand.hands.anny_model``)."""
    from sesahand.hands.anny_model import default_cache_dir

    return default_cache_dir()


def _load_module(relative: str):
    """A helper module of this repository by path (``tools/tiny_sd15.py``, a test module);
    tests are imported without packages, so they cannot import each other."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(f"sesahand_local_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_local():
    """``load_local("tools/tiny_sd15.py")``: a repository module loaded by path."""
    return _load_module


@pytest.fixture(scope="session")
def comfyui(tmp_path_factory):
    """ComfyUI imported in-process (CPU) with this pack loaded.

    Returns a namespace: ``node(node_id)`` gives a loaded node class, ``pack_module`` is the
    pack as ComfyUI imported it, ``folder_paths`` is ComfyUI's module, ``output_dir`` and
    ``mano_dir`` are temporary folders, ``path`` is ComfyUI's folder, ``cache_dir`` the shared
    SesaHand cache, ``link_pack`` (tools/comfy_server.py).
    """
    if not (COMFYUI_PATH / "main.py").is_file():
        pytest.skip(f"no ComfyUI at {COMFYUI_PATH}: export ComfyUI 0.3.64 there or set COMFYUI_PATH")
    loaded = sys.modules.get("nodes")
    if loaded is not None and not str(getattr(loaded, "__file__", "")).startswith(str(COMFYUI_PATH)):
        pytest.fail(f"a module named 'nodes' was imported from {loaded.__file__} before ComfyUI's")
    sys.path.insert(0, str(COMFYUI_PATH))
    try:
        from comfy.cli_args import args

        args.cpu = True  # before any other comfy import: no GPU driver needed
        folder_paths = importlib.import_module("folder_paths")
        nodes = importlib.import_module("nodes")
    except ImportError as exc:
        pytest.skip(f"ComfyUI's requirements are not installed ({exc}); "
                    f"pip install -r {COMFYUI_PATH / 'requirements.txt'} requests")

    root = tmp_path_factory.mktemp("comfyui")
    for name in ("output", "input", "temp"):
        (root / name).mkdir()
    folder_paths.set_output_directory(str(root / "output"))
    folder_paths.set_input_directory(str(root / "input"))
    folder_paths.set_temp_directory(str(root / "temp"))
    # As a user's extra_model_paths.yaml would, before the pack registers its folders.
    folder_paths.add_model_folder_path("sesahand", str(shared_cache_dir()), is_default=True)
    folder_paths.add_model_folder_path("mano", str(root / "mano"), is_default=True)

    link = link_pack(root / "custom_nodes")
    assert asyncio.run(nodes.load_custom_node(str(link), module_parent="custom_nodes")), \
        "ComfyUI failed to load the pack (see the log above)"

    return SimpleNamespace(
        path=COMFYUI_PATH,
        link_pack=link_pack,
        cache_dir=shared_cache_dir(),
        node=nodes.NODE_CLASS_MAPPINGS.__getitem__,
        folder_paths=folder_paths,
        output_dir=root / "output",
        mano_dir=root / "mano",
        pack_module=sys.modules[str(link).replace(".", "_x_")],  # ComfyUI's module name
    )
