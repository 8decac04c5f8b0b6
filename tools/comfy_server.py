"""Run a headless ComfyUI with this pack loaded (for `make demo`, tools/build_workflows.py and
the real-ComfyUI tests).

Everything the server writes (output, input, temp, user folders, the log) stays under one
folder, ``root``; the pack is loaded through a link ``root/custom_nodes/comfyui-sesahand``; model
folders are added with an ``extra_model_paths.yaml`` written there. The server listens on a free
loopback port and is stopped when the context ends, also on an error or Ctrl-C.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "comfyui-sesahand"


def link_pack(folder: Path) -> Path:
    """Make ``folder/comfyui-sesahand`` a link to this repository; returns the link."""
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / PACK_NAME
    link.symlink_to(REPO, target_is_directory=True)
    return link


def comfy_command(root: Path, model_folders: Mapping[str, str | Path | list] | None = None) -> list[str]:
    """The command line (run in ComfyUI's folder) of a CPU ComfyUI whose state lives in ``root``.

    Args:
        root: an empty or missing folder; ``custom_nodes``, ``output``, ``input``, ``temp``,
            ``user`` and ``extra_model_paths.yaml`` are made in it.
        model_folders: model folder name (``checkpoints``, ``controlnet``, ``sesahand``...) ->
            a folder (or a list of folders) added to it.
    """
    root.mkdir(parents=True, exist_ok=True)
    link = link_pack(root / "custom_nodes")
    for name in ("output", "input", "temp", "user"):
        (root / name).mkdir(exist_ok=True)
    paths = {name: "\n".join(map(str, folder if isinstance(folder, list) else [folder]))
             for name, folder in (model_folders or {}).items()}  # extra_model_paths: one path per line
    config = root / "extra_model_paths.yaml"
    config.write_text(json.dumps({"sesahand": {"custom_nodes": str(link.parent), **paths}}))  # JSON is YAML
    return [
        sys.executable, "main.py", "--cpu", "--disable-auto-launch", "--disable-api-nodes",
        "--database-url", "sqlite:///:memory:", "--extra-model-paths-config", str(config),
        "--output-directory", str(root / "output"), "--input-directory", str(root / "input"),
        "--temp-directory", str(root / "temp"), "--user-directory", str(root / "user"),
    ]


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(comfyui_path: Path, command: list[str], root: Path, startup_timeout: float = 180,
                   env: Mapping[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start ``command`` (from :func:`comfy_command`) in ``comfyui_path`` on a free loopback port,
    logging to ``root/server.log``; yields ``(base URL, process)`` once ``/system_stats`` answers
    and stops the server (terminate, then kill after 30 s) when the context ends. ``env``: extra
    environment variables of the server.

    Raises:
        RuntimeError: the server exited or did not answer within ``startup_timeout`` seconds
            (the message ends with the log's tail).
    """
    port = free_port()
    log_path = root / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command + ["--listen", "127.0.0.1", "--port", str(port)], cwd=comfyui_path,
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError("ComfyUI exited during startup:\n" + log_path.read_text()[-4000:])
                try:
                    requests.get(base + "/system_stats", timeout=5)
                    break
                except requests.ConnectionError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"ComfyUI did not answer in {startup_timeout:.0f} s:\n"
                                           + log_path.read_text()[-4000:]) from None
                    time.sleep(0.5)
            yield base, proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
