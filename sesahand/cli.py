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
from pathlib import Path

log = logging.getLogger("sesahand")

#: Modules adding more commands: each has ``register(subparsers)``, which imports nothing heavy
#: (the command's own function imports what it needs when it runs).
COMMAND_MODULES = (".semantics.commands", ".data.commands", ".eval.commands", ".train.commands")


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected WIDTHxHEIGHT, e.g. 512x512") from None
    for v in (w, h):
        if v <= 0 or v % 8:
            raise argparse.ArgumentTypeError(f"size {text!r}: both sides must be positive multiples of 8 "
                                             "(Stable Diffusion works on an 8-pixel latent grid), e.g. 512x512")
    return w, h


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


def cmd_render(args) -> int:
    import numpy as np

    from .hands import Camera, load_hand_model
    from .io import atomic_path, atomic_write_bytes
    from .pipeline import render_scenes
    from .render import save_conditions

    spec = _pose_spec(args)
    model = load_hand_model(args.hand_model, mano_path=args.mano_path)
    camera = Camera.default(*args.size, fov_deg=args.fov)
    scenes = spec.resolve(model, camera, 1)
    conditions, rendered = render_scenes(model, scenes, backend=args.backend, arm=args.arm)
    labels = rendered.frame_dict(0)
    labels["request"] = {"pose": args.pose, "seed": args.seed, "size": list(args.size), "fov_deg": args.fov,
                         "hand_model": args.hand_model, "backend": args.backend, "arm": args.arm}
    out = Path(args.out)
    written = save_conditions(conditions, 0, out)
    with atomic_path(out / "depth.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, conditions.depth[0].cpu().numpy())
    atomic_write_bytes(out / "labels.json", json.dumps(labels, indent=1).encode())
    log.info("wrote %s, depth.npy and labels.json to %s", ", ".join(p.name for p in written.values()), out)
    return 0


def _vary(text: str) -> tuple[str, ...]:
    from .queue import VARY_CHOICES

    names = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    bad = [v for v in names if v not in VARY_CHOICES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"--vary {text!r}: a comma list of {', '.join(VARY_CHOICES)}, "
                                         "e.g. pose,seed")
    return names


def cmd_queue(args) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .queue import DEFAULT_SERVER, format_summary, load_workflow, run_queue

    workflow = load_workflow(args.workflow)
    with logging_redirect_tqdm():
        try:
            report = run_queue(args.server or [DEFAULT_SERVER], workflow, count=args.count, out=args.out,
                               seed=args.seed, vary=args.vary, retries=args.retries)
        except KeyboardInterrupt:
            log.warning("stopped: prompts already queued keep running on their servers; run the same "
                        "command again to collect them and go on")
            return 130
    print(format_summary(report))
    return 0 if report.ok else 1


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
    r.add_argument("--size", type=_size, default=(512, 512), help="WIDTHxHEIGHT, multiples of 8 (default 512x512)")
    r.add_argument("--fov", type=float, default=40.0, help="horizontal field of view in degrees (default 40)")
    r.add_argument("--hand-model", choices=("anny", "mano"), default="anny", help="default: anny (open)")
    r.add_argument("--mano-path", help="folder with MANO_RIGHT.pkl / MANO_LEFT.pkl (for --hand-model mano)")
    r.add_argument("--backend", choices=("auto", "moderngl", "nvdiffrast"), default="auto")
    r.add_argument("--arm", choices=("none", "forearm", "arm"), default="none",
                   help="also render Anny's forearm or whole arm attached to each hand, in every map "
                        "(arm_mask.png, arm joints in labels.json); built once, then cached")
    r.add_argument("--out", required=True, help="output folder")
    r.set_defaults(func=cmd_render)
    q = sub.add_parser("queue", help="run a workflow N times on running ComfyUI servers",
                       description="Submit COUNT jobs of a ComfyUI workflow (UI or API format) to running "
                                   "ComfyUI servers, follow them, download their saved files into OUT "
                                   "and record every job in OUT/manifest.jsonl; the same command "
                                   "resumes an interrupted run without duplicates. Exit status 1 if a "
                                   "job failed or was interrupted.")
    q.add_argument("--server", action="append",
                   help="ComfyUI base URL; repeat to spread the jobs over several servers "
                        "(default: http://127.0.0.1:8188)")
    q.add_argument("--workflow", required=True, help="workflow .json, as saved by the UI or exported in API format")
    q.add_argument("--count", type=int, default=1, help="number of jobs (default 1)")
    q.add_argument("--seed", type=int, default=0, help="job i uses seed SEED + i (default 0)")
    q.add_argument("--vary", type=_vary, default=("seed",),
                   help="what changes per job, a comma list: seed (every seed / noise_seed input), "
                        "pose (SesaHand Hand Pose nodes in random mode) (default: seed)")
    q.add_argument("--out", default="queue_out", help="output folder (default ./queue_out)")
    q.add_argument("--retries", type=int, default=2,
                   help="extra attempts after an execution or connection error (default 2); "
                        "validation errors are never retried")
    q.set_defaults(func=cmd_queue)
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
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
