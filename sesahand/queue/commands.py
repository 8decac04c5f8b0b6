"""The ``queue`` command of ``python -m sesahand`` (registered by :mod:`sesahand.cli`)."""

from __future__ import annotations

import argparse
import logging

from .client import DEFAULT_SERVER
from .workflow import VARY_CHOICES

log = logging.getLogger("sesahand")


def _vary(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    bad = [v for v in names if v not in VARY_CHOICES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"--vary {text!r}: a comma list of {', '.join(VARY_CHOICES)}, "
                                         "e.g. pose,seed")
    return names


def cmd_queue(args) -> int:
    """Run the jobs, print :func:`~sesahand.queue.format_summary`; exit status 0 when every job
    is done, 1 when one failed or was interrupted, 130 on Ctrl-C."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    import sesahand.queue as package  # the package's public names (a replaced ComfyClient included)

    workflow = package.load_workflow(args.workflow)
    with logging_redirect_tqdm():
        try:
            report = package.run_queue(args.server or [DEFAULT_SERVER], workflow, count=args.count,
                                       out=args.out, seed=args.seed, vary=args.vary, retries=args.retries,
                                       client_factory=package.ComfyClient)
        except KeyboardInterrupt:
            log.warning("stopped: prompts already queued keep running on their servers; run the same "
                        "command again to collect them and go on")
            return 130
    print(package.format_summary(report))
    return 0 if report.ok else 1


def register(sub) -> None:
    """Add ``queue`` to the ``python -m sesahand`` subcommands ``sub``."""
    q = sub.add_parser("queue", help="run a workflow N times on running ComfyUI servers",
                       description="Submit COUNT jobs of a ComfyUI workflow (UI or API format) to running "
                                   "ComfyUI servers, follow them, download their saved files into OUT "
                                   "and record every job in OUT/manifest.jsonl; the same command "
                                   "resumes an interrupted run without duplicates. Exit status 1 if a "
                                   "job failed or was interrupted.")
    q.add_argument("--server", action="append",
                   help=f"ComfyUI base URL; repeat to spread the jobs over several servers (default: {DEFAULT_SERVER})")
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
