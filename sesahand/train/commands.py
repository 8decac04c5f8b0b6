"""The ``train`` command of ``python -m sesahand``."""

from __future__ import annotations


def cmd_train(args) -> int:
    """Load the config, train (resuming if asked) and export; exit status 0 on success."""
    import logging

    from tqdm.contrib.logging import logging_redirect_tqdm

    from .config import load_config
    from .loop import train

    config = load_config(args.config)
    with logging_redirect_tqdm():
        try:
            result = train(config, resume=args.resume)
        except KeyboardInterrupt:
            logging.getLogger(__name__).warning(
                "stopped: resume from the last checkpoint with --resume latest")
            return 130
    if result.export_path is not None:
        logging.getLogger(__name__).info("trained %d steps; ControlNet: %s", result.global_step, result.export_path)
    return 0


def register(sub) -> None:
    """Add ``train`` to the CLI's subparsers (imports nothing heavy)."""
    p = sub.add_parser(
        "train", help="train the SesaHand ControlNet (SF + AE) from a YAML config",
        description="Train the SesaHand ControlNet on SD1.5 (frozen UNet, trainable ControlNet with "
                    "structural fusion, hand-attention bias) as CONFIG says (see configs/default.yaml), "
                    "writing checkpoints, logs, validation images and OUTPUT/controlnet.safetensors. "
                    "Several GPUs or machines: accelerate launch [options] -m sesahand train --config CONFIG.")
    p.add_argument("--config", required=True, help="YAML config file (configs/default.yaml documents every key)")
    p.add_argument("--resume", metavar="DIR|latest",
                   help="go on from a checkpoint: 'latest' (newest in OUTPUT/checkpoints) or a "
                        "checkpoint folder; the run continues exactly where it stopped")
    p.set_defaults(func=cmd_train)
