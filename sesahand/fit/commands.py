"""The ``fit`` command of ``python -m sesahand``: hand meshes fitted to a folder of photos."""

from __future__ import annotations

import argparse
import logging

from ..eval.detector import TASK_HELP

log = logging.getLogger("sesahand")


def cmd_fit(args) -> int:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ..eval.detector import HandKeypointDetector
    from ..hands import load_hand_model
    from .batch import fit_folder, format_summary
    from .fitter import MAX_HANDS, FitOptions
    from .photo import list_photos

    photos = list_photos(args.images)
    if not photos:
        raise ValueError(f"{args.images}: no photos (.jpg, .png, .webp, .bmp, .tif) in this folder")
    options = FitOptions(max_error=args.max_error, min_score=args.min_score)
    model = load_hand_model(args.hand_model, mano_path=args.mano_path)
    with HandKeypointDetector(args.task, num_hands=MAX_HANDS) as detector, logging_redirect_tqdm(), \
            tqdm(total=len(photos), unit="photo", desc="fit") as bar:
        outcomes = fit_folder(args.images, args.out, model, detector, size=args.size, framing=args.framing,
                              hands=args.hands, fov_deg=args.fov, options=options, backend=args.backend,
                              progress=lambda name: bar.update(1))
    print(format_summary(outcomes))
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def register(sub) -> None:
    """Add ``fit`` to the CLI's subparsers."""
    from ..cli import _size

    f = sub.add_parser("fit", help="fit hand meshes to the hands in a folder of photos",
                       description="Detect the hands in every photo of IMAGES_DIR (MediaPipe hand "
                                   "landmarker), fit the hand model to each (2D keypoints + 3D bone "
                                   "directions, joint limits, priors) and write OUT/<photo stem>/: "
                                   "photo.png, pose.json (pose file), labels.json (as 'render' writes "
                                   "it), the condition maps and overlay.png. Resumable: photos whose "
                                   "folder exists are skipped. Ends with a summary table; exit status "
                                   "1 if a photo failed. Method: docs/fitting.md.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("images", metavar="IMAGES_DIR", help="folder of photos (.jpg, .png, .webp, .bmp, .tif)")
    f.add_argument("--out", required=True, help="output folder")
    f.add_argument("--hand-model", choices=("anny", "mano"), default="anny", help="default: anny (open)")
    f.add_argument("--mano-path", help="folder with MANO_RIGHT.pkl / MANO_LEFT.pkl (for --hand-model mano)")
    f.add_argument("--size", type=_size, default=None,
                   help="output WIDTHxHEIGHT (multiples of 8); default: each photo's own pixel frame")
    f.add_argument("--framing", choices=("crop", "letterbox"), default="crop",
                   help="with --size: cut the photo to the output's aspect (crop) or fit it whole with "
                        "black bands (letterbox); K is updated either way (default crop)")
    f.add_argument("--hands", choices=("all", "largest", "left", "right"), default="all",
                   help="which detected hands to fit (default all)")
    f.add_argument("--fov", type=float, default=None,
                   help="field of view across the longer side, degrees, for photos without an EXIF "
                        "focal length (default 50)")
    f.add_argument("--max-error", type=float, default=0.06,
                   help="largest mean reprojection error of a kept hand, in hand sizes (default 0.06)")
    f.add_argument("--min-score", type=float, default=0.5, help="least detector score of a kept hand (default 0.5)")
    f.add_argument("--task", metavar="FILE", help=TASK_HELP)
    f.add_argument("--backend", choices=("auto", "moderngl", "nvdiffrast"), default="auto")
    f.set_defaults(func=cmd_fit)
