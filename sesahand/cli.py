"""``python -m sesahand <command>``: the work people do outside ComfyUI.

Commands:
    render   pose hands (preset, pose file or random) and write the condition maps + labels.
    queue    run a ComfyUI workflow N times on running ComfyUI servers (seeds/poses varied per
             job), download the results and keep a resumable manifest.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
from pathlib import Path

log = logging.getLogger("sesahand")

#: Modules adding more commands: each has ``register(subparsers)``, which imports nothing heavy
#: (the command's own function imports what it needs when it runs).
COMMAND_MODULES = (".queue.commands", ".semantics.commands", ".data.commands", ".eval.commands", ".train.commands",
                   ".fit.commands")


#: What ``render`` writes for one frame (in ``--out``, or in ``--out/frame_NNNNN/`` per frame).
RENDER_FILES = ("mesh.png", "depth.png", "normal.png", "pose.png", "mask.png", "depth.npy", "labels.json")
#: Written besides RENDER_FILES when ``--arm`` is not ``none``.
ARM_FILES = ("arm_mask.png",)
_FRAME_DIR = re.compile(r"^frame_\d{5}$")


def _size(text: str) -> tuple[int, int]:
    from .limits import check_image_size

    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected WIDTHxHEIGHT, e.g. 512x512") from None
    try:
        return check_image_size(w, h, f"size {text!r}")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fov(text: str) -> float:
    from .limits import check_fov

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fov {text!r}: expected a number of degrees, e.g. 40") from None
    try:
        return check_fov(value, f"--fov {text!r}")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _pose_spec(args):
    from .hands import PRESET_NAMES, PoseSpec

    if args.pose == "random":
        return PoseSpec.random(args.seed, num_hands=args.num_hands, side=args.side)
    if args.pose in PRESET_NAMES:
        return PoseSpec.preset(args.pose, side=args.side)
    if args.pose.lstrip().startswith("{") or args.pose.endswith(".json") or Path(args.pose).exists():
        return PoseSpec.from_json(args.pose)
    raise ValueError(f"--pose {args.pose!r}: not a preset, a .json pose file or 'random'; presets: "
                     f"{', '.join(PRESET_NAMES)}")


def _render_target(out: Path) -> bool:
    """Check ``--out`` before anything is rendered; True when it holds an earlier render that
    the new one replaces (only ``render``'s own files), False when it is new or empty.

    Raises: ValueError for a file, a link, or a folder holding anything else."""
    if out.is_symlink():
        raise ValueError(f"--out {out}: is a symbolic link; give a folder path")
    if not out.exists():
        return False
    if not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder; give a new folder path")
    names = [p.name for p in out.iterdir()]
    foreign = [n for n in names if n not in RENDER_FILES + ARM_FILES and not _FRAME_DIR.match(n)]
    if foreign:
        raise ValueError(f"--out {out}: the folder holds other files ({', '.join(sorted(foreign)[:5])}); "
                         "give a new or empty folder (render replaces only its own earlier output)")
    return bool(names)


def _write_frame(folder: Path, conditions, rendered, request: dict) -> None:
    import numpy as np

    from .io import atomic_path, atomic_write_bytes
    from .render import save_conditions

    save_conditions(conditions, 0, folder)
    with atomic_path(folder / "depth.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, conditions.depth[0].cpu().numpy())
    labels = rendered.frame_dict(0)
    labels["request"] = request
    atomic_write_bytes(folder / "labels.json", json.dumps(labels, indent=1).encode())


def cmd_render(args) -> int:
    import shutil
    import tempfile

    from tqdm import tqdm

    from .camera import Camera
    from .hands import load_hand_model
    from .pipeline import render_scenes

    out = Path(args.out).absolute()
    replace = _render_target(out)
    spec = _pose_spec(args)
    model = load_hand_model(args.hand_model, mano_path=args.mano_path)
    camera = Camera.default(*args.size, fov_deg=args.fov)
    scenes = spec.resolve(model, camera)  # every frame of a pose file; one otherwise
    request = {"pose": args.pose, "seed": args.seed, "size": list(args.size), "fov_deg": args.fov,
               "hand_model": args.hand_model, "backend": args.backend, "arm": args.arm}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as exc:
        raise ValueError(f"--out {out}: cannot write in {out.parent} ({exc.strerror}); give a folder "
                         "you can write to") from None
    try:
        for i, scene in enumerate(tqdm(scenes, unit="frame", desc="render", disable=len(scenes) == 1)):
            conditions, rendered = render_scenes(model, [scene], backend=args.backend, arm=args.arm)
            folder = tmp if len(scenes) == 1 else tmp / f"frame_{i:05d}"
            _write_frame(folder, conditions, rendered, dict(request, frame=i))
        os.chmod(tmp, 0o777 & ~_umask())
        if replace:  # swap the earlier render out, then remove it
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
            os.replace(out, old)
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old, out)  # the earlier render stays as it was
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)  # also onto an empty folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    what = "the maps" if len(scenes) == 1 else f"{len(scenes)} frames (frame_00000/...)"
    log.info("wrote %s (%s, depth.npy, labels.json) to %s", what, ", ".join(RENDER_FILES[:5]), out)
    return 0


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sesahand", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="render condition maps and labels of posed hands")
    r.add_argument("--pose", default="open_palm",
                   help="a preset name, a pose .json file (or its JSON text), or 'random' (default: open_palm)")
    r.add_argument("--seed", type=int, default=0, help="seed of --pose random")
    r.add_argument("--num-hands", type=int, choices=(1, 2), default=1, help="hands of --pose random")
    r.add_argument("--side", choices=("right", "left"), default="right", help="side of a preset or single random hand")
    r.add_argument("--size", type=_size, default=(512, 512),
                   help="WIDTHxHEIGHT, multiples of 8, each side at most 4096 (default 512x512)")
    r.add_argument("--fov", type=_fov, default=40.0, help="horizontal field of view in degrees, 5..120 (default 40)")
    r.add_argument("--hand-model", choices=("anny", "mano"), default="anny", help="default: anny (open)")
    r.add_argument("--mano-path", help="folder with MANO_RIGHT.pkl / MANO_LEFT.pkl (for --hand-model mano)")
    r.add_argument("--backend", choices=("auto", "moderngl", "nvdiffrast"), default="auto")
    r.add_argument("--arm", choices=("none", "forearm", "arm"), default="none",
                   help="also render Anny's forearm or whole arm attached to each hand, in every map "
                        "(arm_mask.png, arm joints in labels.json); built once, then cached")
    r.add_argument("--out", required=True,
                   help="output folder (new, empty, or an earlier render's, which is replaced); a pose "
                        "file with several frames writes frame_00000/, frame_00001/, ... in it")
    r.set_defaults(func=cmd_render)
    for name in COMMAND_MODULES:
        importlib.import_module(name, __package__).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, RuntimeError, OSError) as exc:
        log.error("%s", exc)
        return 2
    except MemoryError:
        log.error("out of memory; give a smaller size or fewer frames")
        return 2
