"""`make demo`: the main job end to end in a real ComfyUI.

Finds ComfyUI (``--comfyui``, else ``$COMFYUI_PATH``, else ``~/ComfyUI``; with
``--fetch-comfyui`` it clones the pinned release when it is absent and the network allows),
starts it headless on a free loopback port with this pack loaded, queues
``workflows/sesahand_generate.json`` and writes into ``--out`` (default ``./demo_out``):

* ``image.png``: the generated picture;
* ``maps/{mesh,depth,normal,pose}.png``: the condition maps it was made from (the workflow's
  previews);
* ``labels.jsonl``, ``images/``, ``conditions/``: the labelled dataset sample written by the
  workflow's SesaHand Save Dataset Sample node (see the README's dataset format);
* ``photo/``: the photo path, ``workflows/sesahand_from_photo.json`` on a real photo shipped
  with the pack (``tests/data/photos/two_hands_back.jpg``): ``overlay.png`` (the fit: detected
  keypoints, fitted joints, mesh outline), ``image.png``, ``maps/`` and its dataset sample. It
  needs MediaPipe's hand landmarker: ``$SESAHAND_HAND_LANDMARKER`` (``make demo`` builds
  ``.venv/models/hand_landmarker.task`` and sets it).

Models: ``$SESAHAND_CHECKPOINT`` (an SD1.5 checkpoint file) and ``$SESAHAND_CONTROLNET`` (a
SesaHand or other SD1.5 ControlNet file). Without a checkpoint the demo builds a tiny
random-weight SD1.5-format checkpoint and ControlNet (``tools/tiny_sd15.py``): the picture is
noise by design, the run checks the pipeline, not the weights. A real checkpoint without a
ControlNet runs without the control (the Apply Hand Control node is left out).

The server is stopped at the end, also on failure or Ctrl-C; its state lives in a temporary
folder that is removed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from tqdm import tqdm

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from sesahand.queue import (
    ComfyClient,
    PromptRejected,
    TransportError,
    history_outcome,
    ui_to_api,
)
from tools.build_workflows import DEMO_PHOTO, PHOTO_FILE
from tools.comfy_server import comfy_command, running_server

COMFYUI_RELEASE = "v0.3.64"
COMFYUI_GIT = "https://github.com/Comfy-Org/ComfyUI.git"
WORKFLOW = REPO / "workflows" / "sesahand_generate.json"
PHOTO_WORKFLOW = REPO / "workflows" / "sesahand_from_photo.json"
TINY_CHECKPOINT = "sesahand_tiny_random_sd15.safetensors"
TINY_CONTROLNET = "sesahand_tiny_random_controlnet.safetensors"
TINY_STEPS = 4
TINY_SIZE = 256
DATASET = "sesahand_demo"
FILES = "sesahand_demo_files"
PHOTO_DATASET = "sesahand_demo_photo"
PHOTO_FILES = "sesahand_demo_photo_files"
PROVIDE_COMFYUI = (
    "Provide ComfyUI {release} in one of these ways, then run `make demo` again:\n"
    "  git clone --depth 1 --branch {release} {git} ~/ComfyUI\n"
    "  or set COMFYUI_PATH=/path/to/ComfyUI (a folder with main.py), e.g. `make demo COMFYUI_PATH=...`."
)


class DemoError(Exception):
    """A problem the user can fix; the message says how."""


def comfyui_folder(path: str | None) -> Path:
    """``--comfyui``, else ``$COMFYUI_PATH``, else ``~/ComfyUI``."""
    return Path(path or os.environ.get("COMFYUI_PATH") or "~/ComfyUI").expanduser().resolve()


def fetch_comfyui(folder: Path) -> None:
    """Clone the pinned ComfyUI release into ``folder`` when it has no ComfyUI yet.

    Raises:
        DemoError: the clone failed (no network, no git); the message says how to provide one.
    """
    if (folder / "main.py").is_file():
        return
    help_text = PROVIDE_COMFYUI.format(release=COMFYUI_RELEASE, git=COMFYUI_GIT)
    if folder.exists() and any(folder.iterdir()):
        raise DemoError(f"{folder} exists but holds no ComfyUI (no main.py).\n{help_text}")
    if shutil.which("git") is None:
        raise DemoError(f"no ComfyUI at {folder} and no git to clone it.\n{help_text}")
    print(f"No ComfyUI at {folder}: cloning {COMFYUI_RELEASE} from {COMFYUI_GIT} ...", flush=True)
    try:
        subprocess.run(["git", "clone", "--quiet", "--depth", "1", "--branch", COMFYUI_RELEASE, COMFYUI_GIT,
                        str(folder)], check=True, timeout=600,
                       env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise DemoError(f"could not clone ComfyUI ({exc}); the network may not reach GitHub.\n{help_text}") from None


def model_file(variable: str, suffixes=(".safetensors", ".ckpt", ".pt", ".pth")) -> Path | None:
    """The model file named by the environment variable ``variable``, checked; None if unset."""
    value = os.environ.get(variable)
    if not value:
        return None
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        raise DemoError(f"{variable}={value}: no such file (give the path of the model file)")
    if path.suffix.lower() not in suffixes:
        raise DemoError(f"{variable}={value}: expected a {' / '.join(suffixes)} file")
    return path


def tiny_models(comfyui: Path, folder: Path) -> tuple[Path, Path]:
    """Build the tiny random SD1.5-format checkpoint and ControlNet into ``folder``."""
    sys.path.insert(0, str(comfyui))
    from comfy.cli_args import args

    args.cpu = True  # before any other comfy import
    from tools import tiny_sd15

    folder.mkdir(parents=True, exist_ok=True)
    return (tiny_sd15.build_checkpoint(folder / TINY_CHECKPOINT),
            tiny_sd15.build_controlnet(folder / TINY_CONTROLNET))


def demo_prompt(workflow: dict, object_info: dict, checkpoint: str, controlnet: str | None, tiny: bool,
                files: str = FILES, dataset: str = DATASET) -> dict:
    """The API prompt of the demo: the shipped workflow with the demo's models, the condition
    previews saved (named after the output they show), and the outputs under ``files`` and
    ``dataset`` in ComfyUI's output folder. ``tiny``: the tiny random
    checkpoint, whose one-level UNet has cross-attention only in its encoder and middle block
    (hand attention goes on all layers; ``TINY_STEPS`` steps at ``TINY_SIZE`` px: its full-resolution
    attention is slow on a CPU, and noise needs no more).

    Raises:
        DemoError: the workflow lacks a node the demo needs.
    """
    prompt = ui_to_api(workflow, object_info)
    by_type: dict[str, list[str]] = {}
    for node_id, node in prompt.items():
        by_type.setdefault(node["class_type"], []).append(node_id)
    for needed in ("CheckpointLoaderSimple", "SesaHandRenderConditions", "SesaHandApplyHandControl",
                   "SesaHandLoadControlNet", "SaveImage", "SesaHandSaveDatasetSample"):
        if needed not in by_type:
            raise DemoError(f"the workflow has no {needed} node; rebuild it with tools/build_workflows.py")
    prompt[by_type["CheckpointLoaderSimple"][0]]["inputs"]["ckpt_name"] = checkpoint
    if tiny:
        for node_id in by_type.get("SesaHandHandAttentionSampler", []):
            prompt[node_id]["inputs"].update(layers="all", steps=TINY_STEPS)
        for node_id in by_type["SesaHandRenderConditions"] + by_type.get("SesaHandHandPoseFromImage", []):
            prompt[node_id]["inputs"].update(width=TINY_SIZE, height=TINY_SIZE)
    for node_id in by_type["SaveImage"]:
        prompt[node_id]["inputs"]["filename_prefix"] = f"{files}/image"
    for node_id in by_type.get("PreviewImage", []):
        source = prompt[node_id]["inputs"]["images"]
        name = object_info[prompt[source[0]]["class_type"]]["output_name"][source[1]].lower()
        prompt[node_id] = {"class_type": "SaveImage",
                           "inputs": {"images": source, "filename_prefix": f"{files}/maps/{name}"}}
    for node_id in by_type["SesaHandSaveDatasetSample"]:
        prompt[node_id]["inputs"].update(dataset=dataset, ckpt_name=checkpoint)
        if controlnet is not None:
            prompt[node_id]["inputs"]["controlnet_name"] = controlnet
    apply_id = by_type["SesaHandApplyHandControl"][0]
    if controlnet is not None:
        prompt[by_type["SesaHandLoadControlNet"][0]]["inputs"]["control_net_name"] = controlnet
        return prompt
    # No ControlNet: take Apply Hand Control out, its consumers read its conditioning inputs.
    apply_inputs = prompt.pop(apply_id)["inputs"]
    prompt.pop(by_type["SesaHandLoadControlNet"][0])
    for node in prompt.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and value[0] == apply_id:
                node["inputs"][name] = apply_inputs[("positive", "negative")[value[1]]]
    return prompt


def run_demo(comfyui: Path, out: Path) -> None:
    """Start the server, queue the demo prompt, copy the results into ``out``."""
    if not (comfyui / "main.py").is_file():
        raise DemoError(f"no ComfyUI at {comfyui}.\n"
                        + PROVIDE_COMFYUI.format(release=COMFYUI_RELEASE, git=COMFYUI_GIT))
    checkpoint = model_file("SESAHAND_CHECKPOINT")
    controlnet = model_file("SESAHAND_CONTROLNET")
    from sesahand.eval.detector import find_task_path
    from sesahand.hands.anny_model import default_cache_dir

    try:
        find_task_path()  # the photo path's hand landmarker ($SESAHAND_HAND_LANDMARKER)
    except FileNotFoundError as exc:
        raise DemoError(f"the photo workflow needs MediaPipe's hand landmarker: {exc}") from None

    with tempfile.TemporaryDirectory(prefix="sesahand-demo-") as work:
        work = Path(work)
        tiny = checkpoint is None
        if tiny:
            print("No SESAHAND_CHECKPOINT given: building a tiny random-weight SD1.5-format checkpoint and "
                  "ControlNet. The picture will be NOISE BY DESIGN: this run checks the pipeline, not the "
                  "weights. Set SESAHAND_CHECKPOINT (and SESAHAND_CONTROLNET) for a real picture.", flush=True)
            checkpoint, controlnet = tiny_models(comfyui, work / "models")
        elif controlnet is None:
            print("No SESAHAND_CONTROLNET given: running without the hand control.", flush=True)
        folders = {"checkpoints": checkpoint.parent, "sesahand": default_cache_dir()}
        if controlnet is not None:
            folders["controlnet"] = controlnet.parent
        command = comfy_command(work / "comfyui", folders)
        print(f"Starting ComfyUI from {comfyui} (log: {work / 'comfyui' / 'server.log'}) ...", flush=True)
        shutil.copyfile(DEMO_PHOTO, work / "comfyui" / "input" / PHOTO_FILE)
        with running_server(comfyui, command, work / "comfyui") as (base, _):
            client = ComfyClient(base)
            try:
                object_info = client.object_info()
                runs = ((WORKFLOW, FILES, DATASET, out), (PHOTO_WORKFLOW, PHOTO_FILES, PHOTO_DATASET, out / "photo"))
                for workflow, files, dataset, target in runs:
                    prompt = demo_prompt(json.loads(workflow.read_text()), object_info, checkpoint.name,
                                         controlnet.name if controlnet is not None else None, tiny,
                                         files=files, dataset=dataset)
                    _run(client, prompt, workflow.stem)
                    _collect(work / "comfyui" / "output", files, dataset, target)
            finally:
                client.close()
    print(f"Done: {out}/image.png, {out}/maps/ (condition maps), {out}/labels.jsonl + images/ + conditions/ "
          f"(the dataset sample); the photo path in {out}/photo/ (overlay.png: the fit)", flush=True)


def _run(client: ComfyClient, prompt: dict, name: str) -> None:
    """Queue ``prompt`` and wait for it, with a progress bar. Raises DemoError if it fails."""
    prompt_id = uuid.uuid4().hex
    client.submit(prompt, prompt_id)
    with tqdm(desc=name, unit="step") as bar:
        def progress(node, value, maximum):
            if value is not None and maximum:
                bar.total = maximum
                bar.n = value
                bar.set_postfix_str(f"node {node}", refresh=True)
        entry = client.wait(prompt_id, progress)
    status, error = history_outcome(entry)
    if status != "success":
        raise DemoError(f"{name} failed in ComfyUI: {error}\n(server log: see above)")


def _collect(output: Path, files: str, dataset: str, out: Path) -> None:
    """Copy a run's picture, maps (``overlay.png`` to the top) and dataset sample into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(min((output / files).glob("image_*.png")), out / "image.png")
    (out / "maps").mkdir(exist_ok=True)
    for source in sorted((output / files / "maps").glob("*.png")):  # SaveImage: NAME_00001_.png
        name = source.name.rsplit("_", 2)[0] + ".png"
        shutil.copyfile(source, out / ("overlay.png" if name == "overlay.png" else f"maps/{name}"))
    shutil.copytree(output / dataset, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".lock"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", help="ComfyUI folder (default: $COMFYUI_PATH, else ~/ComfyUI)")
    parser.add_argument("--out", default="demo_out", help="output folder (default ./demo_out)")
    parser.add_argument("--fetch-comfyui", action="store_true",
                        help=f"only make sure ComfyUI is there (clone {COMFYUI_RELEASE} if absent) and exit")
    args = parser.parse_args(argv)
    folder = comfyui_folder(args.comfyui)
    try:
        if args.fetch_comfyui:
            fetch_comfyui(folder)
        else:
            run_demo(folder, Path(args.out))
    except (DemoError, PromptRejected, TransportError, RuntimeError) as exc:
        print(f"make demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("make demo: interrupted; the ComfyUI server was stopped.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
