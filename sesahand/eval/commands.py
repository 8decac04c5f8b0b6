"""The ``eval`` commands of ``python -m sesahand``: qa, qa-model, metrics, eval-images."""

from __future__ import annotations

import argparse
import logging

from .detector import TASK_HELP

log = logging.getLogger("sesahand")


def cmd_qa(args) -> int:
    from .qa import run_qa

    report = run_qa(args.dataset, task_path=args.task)
    print(report.format_table())
    return 0


def cmd_qa_model(args) -> int:
    from .detector import build_hand_landmarker_task

    build_hand_landmarker_task(args.source, args.out)
    return 0


def cmd_metrics(args) -> int:
    from .metrics import evaluate, load_points_file

    pred_xyz, pred_verts = load_points_file(args.pred)
    gt_xyz, gt_verts = load_points_file(args.gt)
    if (pred_verts is None) != (gt_verts is None):
        log.warning("only %s has verts: mesh metrics (MPVPE, F-scores) skipped",
                    "PRED" if gt_verts is None else "GT")
    out = evaluate(pred_xyz, gt_xyz, pred_verts, gt_verts)
    rows = [("samples", str(out["num_samples"]))]
    for key, label in (("mpjpe_mm", "MPJPE (mm)"), ("pa_mpjpe_mm", "PA-MPJPE (mm)"),
                       ("mpvpe_mm", "MPVPE (mm)"), ("pa_mpvpe_mm", "PA-MPVPE (mm)"),
                       ("f5", "F@5mm"), ("f15", "F@15mm"), ("pa_f5", "PA F@5mm"), ("pa_f15", "PA F@15mm")):
        if key in out:
            rows.append((label, "-" if out[key] is None else f"{out[key]:.3f}"))
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    return 0


def cmd_eval_images(args) -> int:
    import json

    import torch

    from ..io import atomic_write_bytes
    from .generation import evaluate_generation

    device = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    report = evaluate_generation(args.generated, args.reference, inception=args.inception,
                                 task_path=args.task, fid=not args.no_fid,
                                 use_detector=not args.no_detector, device=device,
                                 batch_size=args.batch_size, seed=args.seed)
    print(report.format_table())
    atomic_write_bytes(args.out, (json.dumps(report.to_dict(), indent=1) + "\n").encode())
    log.info("wrote %s", args.out)
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: expected a positive integer")
    return value


def register(sub) -> None:
    """Add ``qa``, ``qa-model``, ``metrics`` and ``eval-images`` to the CLI's subparsers."""
    q = sub.add_parser("qa", help="alignment-check every sample of a dataset and store the scores",
                       description="Run the hand keypoint detector (MediaPipe) on every image of "
                                   "DATASET_DIR, compare with the labelled joints, write each result "
                                   "into the record's 'alignment' field (labels.jsonl rewritten "
                                   "atomically) and print a summary table.")
    q.add_argument("dataset", metavar="DATASET_DIR", help="dataset folder (labels.jsonl, images/)")
    q.add_argument("--task", metavar="FILE", help=TASK_HELP)
    q.set_defaults(func=cmd_qa)
    m = sub.add_parser("qa-model", help="build MediaPipe's hand_landmarker.task from the mediapipe 0.10.21 wheel",
                       description="Zip the palm detector and hand landmark models of the mediapipe "
                                   "0.10.21 wheel into a hand_landmarker.task file for the alignment "
                                   "check. Get the wheel with: pip download --no-deps "
                                   "mediapipe==0.10.21 -d wheels/",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("--source", required=True, metavar="WHEEL_OR_DIR",
                   help="the mediapipe-0.10.21-*.whl file, or a folder with its unpacked models")
    m.add_argument("--out", required=True, metavar="FILE", help="the .task file to write")
    m.set_defaults(func=cmd_qa_model)
    r = sub.add_parser("metrics", help="FreiHAND metrics (MPJPE, PA-MPJPE, MPVPE, F@5/15mm) of predictions",
                       description="Compare predicted with ground-truth 3D hands (metres, camera "
                                   "frame). Each file: {\"xyz\": N x 21 x 3, \"verts\": N x V x 3 "
                                   "(optional)}, FreiHAND's [xyz_list, verts_list], or a list of "
                                   "N x 21 x 3 keypoints. Errors are printed in millimetres.")
    r.add_argument("pred", metavar="PRED.json")
    r.add_argument("gt", metavar="GT.json")
    r.set_defaults(func=cmd_metrics)
    e = sub.add_parser("eval-images", help="FID, KID, FID-H, KID-H, hand confidence and label "
                                           "alignment of generated images",
                       description="Compare GENERATED_DIR (a SesaHand dataset folder, or any image "
                                   "folder) with real images: FID and KID (torchmetrics, Inception "
                                   "weights from a local file), FID-H / KID-H on hand crops (label "
                                   "boxes; detected hands for folders without labels), the mean "
                                   "MediaPipe hand confidence, and the label alignment. Prints a "
                                   "table and writes the numbers as JSON.")
    e.add_argument("generated", metavar="GENERATED_DIR")
    e.add_argument("--reference", required=True, metavar="REAL_DIR",
                   help="folder of real images (searched recursively), or a SesaHand dataset")
    e.add_argument("--inception", metavar="FILE",
                   help="FID Inception-v3 weights: torch-fidelity's "
                        "weights-inception-2015-12-05-6726825d.pth or its .safetensors "
                        "(default: $SESAHAND_INCEPTION)")
    e.add_argument("--task", metavar="FILE", help=TASK_HELP)
    e.add_argument("--out", default="eval_images.json", metavar="FILE",
                   help="JSON file to write (default ./eval_images.json)")
    e.add_argument("--device", default="auto", help="torch device of the Inception network "
                                                    "(default: cuda when available, else cpu)")
    e.add_argument("--batch-size", type=_positive, default=32, help="images per batch (default 32)")
    e.add_argument("--seed", type=int, default=0, help="seed of KID's subsets (default 0)")
    e.add_argument("--no-fid", action="store_true",
                   help="skip FID, KID, FID-H, KID-H (no Inception file needed)")
    e.add_argument("--no-detector", action="store_true",
                   help="skip hand confidence and alignment (no hand_landmarker.task needed)")
    e.set_defaults(func=cmd_eval_images)
