"""``python -m sesahand caption``: behaviour-semantics prompts for a folder of images.

Writes one JSON line per image, ``{"image": <path relative to IMAGES_DIR>, **SemanticsResult}``,
appended batch by batch (write, flush, fsync), so an interrupted run loses at most the batch in
flight; running the same command again skips the images already in the output and drops a
last line cut short by the interruption.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

DEVICES = "auto, cpu, cuda, cuda:N, mps"
DTYPES = ("auto", "float32", "float16", "bfloat16")


def register(sub) -> None:
    """Add the ``caption`` command to the CLI's subparsers."""
    p = sub.add_parser(
        "caption", help="caption a folder of images into behaviour-semantics prompts",
        description="Caption every image under IMAGES_DIR with a local VLM, extract pose, action, "
                    "hand action and environment with a local LLM, compose the prompt, and append "
                    "one JSON line per image to --out. Resumable: images already in --out are "
                    "skipped. Exit status 1 if some images could not be read.")
    p.add_argument("images_dir", metavar="IMAGES_DIR", help="folder of images (searched recursively)")
    p.add_argument("--vlm", required=True, help="local vision-language model folder (the captioner)")
    p.add_argument("--llm", required=True,
                   help="local instruction LLM: a model folder or a .gguf file (the extractor)")
    p.add_argument("--out", required=True, help="output .jsonl file (appended to; resumable)")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch (default 8)")
    p.add_argument("--device", default="auto", help=f"torch device: {DEVICES} (default auto: cuda if "
                                                    "available, else cpu)")
    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="model dtype (default auto: float16 on cuda, else float32)")
    p.add_argument("--cache", help="cache folder: results by image content and model identity, "
                                   "reused across runs and output files")
    p.set_defaults(func=cmd_caption)


def list_images(folder: Path) -> list[str]:
    """Paths (relative, POSIX, sorted) of the files under ``folder`` whose extension PIL reads.

    Raises:
        FileNotFoundError: ``folder`` is not a folder.
        ValueError: it holds no image files.
    """
    from PIL import Image

    if not folder.is_dir():
        raise FileNotFoundError(f"IMAGES_DIR {folder} is not a folder")
    extensions = set(Image.registered_extensions())
    found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in extensions and not p.name.startswith("."))
    if not found:
        raise ValueError(f"IMAGES_DIR {folder} holds no image files (.png, .jpg, .webp ...)")
    return found


def read_done(out: Path) -> set[str]:
    """The ``image`` of every record already in ``out``; a last line without its newline (an
    interrupted write) is cut off the file, with a warning.

    Raises:
        ValueError: a complete line is not a caption record (naming the line).
    """
    if not out.exists():
        return set()
    data = out.read_bytes()
    complete, _, partial = data.rpartition(b"\n")
    if partial:
        log.warning("%s: the last line is incomplete (an interrupted run); dropping it", out)
        os.truncate(out, len(data) - len(partial))
    done = set()
    for number, line in enumerate(complete.split(b"\n") if complete else [], 1):
        if not line.strip():
            continue
        try:
            done.add(json.loads(line)["image"])
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{out} line {number} is not a caption record "
                             "({\"image\": ..., ...}); give another --out or repair the file") from None
    return done


def append_lines(out: Path, records: list[dict]) -> None:
    """Append ``records`` as JSON lines in one write, then flush and fsync."""
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    with open(out, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _device_dtype(device: str, dtype: str):
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r}: expected one of {DEVICES}") from None
    if dtype == "auto":
        dtype = "float16" if device.type == "cuda" else "float32"
    return device, getattr(torch, dtype)


def cmd_caption(args) -> int:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .cache import SemanticsCache
    from .captioner import Captioner
    from .extractor import Extractor
    from .pipeline import SemanticsPipeline

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    folder, out = Path(args.images_dir), Path(args.out)
    names = list_images(folder)
    done = read_done(out)
    pending = [n for n in names if n not in done]
    log.info("%d images in %s, %d already in %s, %d to caption", len(names), folder,
             len(names) - len(pending), out, len(pending))
    if not pending:
        return 0
    device, dtype = _device_dtype(args.device, args.dtype)
    captioner = Captioner.load(args.vlm, device=device, dtype=dtype)
    extractor = Extractor.load(args.llm, device=device, dtype=dtype)
    cache = SemanticsCache(args.cache) if args.cache else None
    pipeline = SemanticsPipeline(captioner, extractor, cache=cache, batch_size=args.batch_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    failed = []
    with logging_redirect_tqdm(), tqdm(total=len(pending), unit="image", desc="caption") as bar:
        try:
            _caption_batches(args.batch_size, folder, out, pending, pipeline, failed, bar)
        except KeyboardInterrupt:
            log.warning("stopped: %s holds every batch finished so far; run the same command "
                        "again to go on", out)
            return 130
    if failed:
        log.warning("%d images could not be read: %s", len(failed), ", ".join(failed))
        return 1
    log.info("wrote %d lines to %s", len(pending), out)
    return 0


def _caption_batches(batch_size, folder, out, pending, pipeline, failed, bar) -> None:
    """Caption ``pending`` in batches, appending each batch's lines to ``out``; unreadable
    images are logged and added to ``failed``."""
    from .captioner import load_image

    for start in range(0, len(pending), batch_size):
        batch, images = [], []
        for name in pending[start:start + batch_size]:
            try:
                images.append(load_image(folder / name))
                batch.append(name)
            except (ValueError, FileNotFoundError) as exc:
                log.warning("skipping %s", exc)
                failed.append(name)
        if images:
            results = pipeline.run(images)
            append_lines(out, [{"image": n, **r.to_dict()} for n, r in zip(batch, results)])
        bar.update(len(pending[start:start + batch_size]))
