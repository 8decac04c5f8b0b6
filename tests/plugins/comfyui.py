"""Real-ComfyUI fixtures shared by every tier that needs ComfyUI: ``tests/nodes`` (nodes
in-process), ``tests/server`` (a served pack) and ``tests/browser`` (a real page). Registered
from ``tests/conftest.py``; ComfyUI core is at ``$COMFYUI_PATH`` (default ``~/ComfyUI``), on CPU.

Every real-ComfyUI test takes the ``comfyui`` fixture (directly or through ``server``), which
skips (with the reason) when ComfyUI or its requirements are missing. The pack is loaded the way
ComfyUI loads it: a ``custom_nodes`` folder holding a link to this repository, passed to
``nodes.load_custom_node``.

Tests that need a served pack (``tests/server`` and ``tests/browser``) share ONE headless server
for the session (``server``), and every test needing SD1.5-format weights shares one set of
tiny random files (``tiny_models``, built once): each test uses its own output prefix and input
file names. Only a test that needs a special process starts its own (``test_server.py``'s
start-up check, the soak test in ``tests/server/soak`` measuring its server's memory).

Heavy imports (ComfyUI, torch, ``tools``) happen inside the fixtures, so that registering this
module costs the library tiers nothing. The open hand's model cache is shared with the library
tier (``$SESAHAND_CACHE_DIR``, else the user cache folder) so its one-off build is not repeated.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]  # tests/plugins/ -> the repository
COMFYUI_PATH = Path(os.environ.get("COMFYUI_PATH", "~/ComfyUI")).expanduser().resolve()


def shared_cache_dir() -> Path:
    """The SesaHand cache the library tier uses too (see ``sesahand.hands.anny_model``)."""
    from sesahand.io import default_cache_dir

    return default_cache_dir()


def _load_module(relative: str):
    """A module of this repository by path (``tools/tiny_sd15.py``, ``nodes/batch.py``) without
    importing its package: ``nodes`` is ComfyUI's module name once ComfyUI is loaded."""
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
def comfyui(tmp_path_factory, anny_model):
    """ComfyUI imported in-process (CPU) with this pack loaded.

    Takes ``anny_model`` first, so the shared cache holds the open hand before any ComfyUI tier
    needs it: on a fresh machine a served ComfyUI would otherwise build it (1-3 minutes) inside
    the first request of a test, beyond the browser tier's waits.

    Returns a namespace: ``node(node_id)`` gives a loaded node class, ``pack_module`` is the
    pack as ComfyUI imported it, ``folder_paths`` is ComfyUI's module, ``output_dir`` and
    ``mano_dir`` are temporary folders, ``path`` is ComfyUI's folder, ``cache_dir`` the shared
    SesaHand cache, ``link_pack`` (tools/comfy_server.py).
    """
    from tools.comfy_server import link_pack

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


def request(url: str, payload: dict | None = None) -> tuple[int, dict]:
    """GET (or POST ``payload`` as JSON); returns the status and the decoded JSON body."""
    import requests

    reply = requests.get(url, timeout=30) if payload is None else requests.post(url, json=payload, timeout=30)
    return reply.status_code, reply.json()


def wait_for_prompt(base: str, prompt_id: str, timeout: float = 180) -> dict:
    """Poll ``/history`` until the prompt has completed; returns its history entry."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        _, history = request(f"{base}/history/{prompt_id}")
        if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
            return history[prompt_id]
        assert time.monotonic() < deadline, f"the prompt did not finish in {timeout:.0f} s"
        time.sleep(0.25)


@pytest.fixture(scope="session", name="wait_for_prompt")
def wait_for_prompt_fixture():
    """:func:`wait_for_prompt` for test modules (they never import each other, conftests or this
    plugin)."""
    return wait_for_prompt


@pytest.fixture(scope="session")
def tiny_models(comfyui, tmp_path_factory):
    """The tier's one set of tiny random SD1.5 files (``tools/tiny_sd15.py``), built once.

    Folders ``checkpoints``, ``controlnet`` and ``sesahand`` (known to the in-process ComfyUI
    and to :func:`server`): ``checkpoints/tiny_sd15.safetensors`` (also linked under the
    shipped workflows' name ``build_workflows.CHECKPOINT``), ``controlnet/plain.safetensors``
    (seed 1) and the two ControlNets the SD1.5 depth + openpose workflow names (seeds 3 and 4).
    Tests add files of their own under their own names. Returns a namespace: ``builder`` (the
    module), ``root``, the three folders, ``checkpoint`` and ``controlnet_file`` (plain).
    """
    from tools import build_workflows

    builder = _load_module("tools/tiny_sd15.py")
    root = tmp_path_factory.mktemp("tiny_models")
    folders = {name: root / name for name in ("checkpoints", "controlnet", "sesahand")}
    for name, folder in folders.items():
        folder.mkdir()
        comfyui.folder_paths.add_model_folder_path(name, str(folder))
    checkpoint = builder.build_checkpoint(folders["checkpoints"] / "tiny_sd15.safetensors")
    os.link(checkpoint, folders["checkpoints"] / build_workflows.CHECKPOINT)  # a regular file, not a link
    controlnet_file = builder.build_controlnet(folders["controlnet"] / "plain.safetensors")
    builder.build_controlnet(folders["controlnet"] / build_workflows.SD15_DEPTH_CONTROLNET, seed=3)
    builder.build_controlnet(folders["controlnet"] / build_workflows.SD15_OPENPOSE_CONTROLNET, seed=4)
    return SimpleNamespace(builder=builder, root=root, checkpoint=checkpoint, controlnet_file=controlnet_file,
                           **folders)


#: The SesaHand header of :func:`hand_controlnet`'s file (what sesahand.train writes).
HAND_CONTROLNET_METADATA = {"sesahand.fusion": "tokens", "sesahand.w": "1.0", "sesahand.alpha": "2.5",
                            "sesahand.render_style": "mesh"}


@pytest.fixture(scope="session")
def hand_controlnet(tiny_models):
    """A tiny SesaHand ControlNet, ``hand_cn.safetensors`` in :func:`tiny_models`' ``sesahand``
    folder (seed 3, header :data:`HAND_CONTROLNET_METADATA`: fusion tokens, w 1, alpha 2.5,
    render style mesh), for the node tests and the served workflows; returns its path."""
    return tiny_models.builder.build_controlnet(tiny_models.sesahand / "hand_cn.safetensors", seed=3,
                                                metadata=HAND_CONTROLNET_METADATA)


@pytest.fixture(scope="session")
def server(comfyui, tiny_models, tmp_path_factory):
    """The one headless ComfyUI (a subprocess on a free loopback port) for every test that needs
    a served pack (``tests/server``, ``tests/browser``); started once (about 15 s), stopped at the
    end of the session.

    Model folders: the shared SesaHand cache and :func:`tiny_models`, plus empty files named
    like every model file the shipped workflows name (validation checks names only). The input
    folder holds the demo photo under the photo workflow's name. Each test uses its own output
    prefix / subfolder and input file names. ``--use-pytorch-cross-attention``: torch's SDPA
    for the core attention on CPU.

    Returns a namespace: ``url`` (base URL), ``root`` (the server's state folder), ``input``,
    ``output``, ``log`` (its log file), ``process``, and the helpers ``request(url, payload=None)``
    -> (status, JSON body) and ``wait_for_prompt(base, prompt_id, timeout=180)`` -> history entry.
    """
    from tools import build_workflows
    from tools.comfy_server import comfy_command, running_server

    root = tmp_path_factory.mktemp("server")
    folders = {"sesahand": [comfyui.cache_dir, tiny_models.sesahand],
               "checkpoints": [tiny_models.checkpoints], "controlnet": [tiny_models.controlnet]}
    for specs in build_workflows.WORKFLOWS.values():
        for spec in specs:
            for name, value in spec.values.items():
                if name in build_workflows.MODEL_INPUTS and value:
                    kind = build_workflows.MODEL_INPUTS[name]
                    placeholders = root / "placeholders" / kind
                    if any((Path(folder) / value).exists() for folder in folders.get(kind, [])):
                        continue  # a real tiny file of that name
                    placeholders.mkdir(parents=True, exist_ok=True)
                    (placeholders / value).touch()
                    if placeholders not in folders.setdefault(kind, []):
                        folders[kind].append(placeholders)
    state = root / "comfyui"
    command = comfy_command(state, folders) + ["--use-pytorch-cross-attention"]
    shutil.copy(build_workflows.DEMO_PHOTO, state / "input" / build_workflows.PHOTO_FILE)
    try:
        # Unbuffered: tests read the log while the server runs.
        with running_server(comfyui.path, command, state, env={"PYTHONUNBUFFERED": "1"}) as (base, process):
            yield SimpleNamespace(url=base, root=state, input=state / "input", output=state / "output",
                                  log=state / "server.log", process=process, request=request,
                                  wait_for_prompt=wait_for_prompt)
    except RuntimeError as exc:
        pytest.fail(str(exc))
