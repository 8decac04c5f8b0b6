"""The ``dataset`` command of ``python -m sesahand``: ``check`` and ``freihand`` subcommands."""

from __future__ import annotations


def cmd_check(args) -> int:
    from .check import check_dataset

    report = check_dataset(args.dir, repair=args.repair)
    print(report.summary())
    if report.repaired:
        report = check_dataset(args.dir)
        if not report.ok:
            print(report.summary())
    return 0 if report.ok else 1


def cmd_freihand(args) -> int:
    from .freihand import export_freihand

    report = export_freihand(args.dir, args.out, mano_path=args.mano_path)
    print(report.summary())
    return 0


def register(sub) -> None:
    """Add ``dataset check`` and ``dataset freihand`` to the CLI's subparsers."""
    d = sub.add_parser("dataset", help="check, repair or export a SesaHand dataset folder")
    dsub = d.add_subparsers(dest="dataset_command", required=True)
    c = dsub.add_parser("check", help="find orphan images, missing files, corrupt or invalid label lines",
                        description="Check a dataset folder. Exit status 1 when problems remain.")
    c.add_argument("dir", help="dataset folder")
    c.add_argument("--repair", action="store_true",
                   help="move orphan files to quarantine/ and rewrite labels.jsonl without bad lines "
                        "(kept in quarantine/bad_lines.jsonl)")
    c.set_defaults(func=cmd_check)
    f = dsub.add_parser("freihand", help="export in FreiHAND's training-set layout",
                        description="Write training/rgb/%%08d.jpg, training_xyz.json, training_K.json "
                                    "(and training_mano.json with --mano-path) for samples with one "
                                    "visible right hand.")
    f.add_argument("dir", help="dataset folder")
    f.add_argument("out", help="export folder (new or empty)")
    f.add_argument("--mano-path", help="folder with MANO_RIGHT.pkl, needed for training_mano.json "
                                       "(FreiHAND's pose is relative to MANO's mean pose)")
    f.set_defaults(func=cmd_freihand)
