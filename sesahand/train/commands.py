"""PLACEHOLDER (being written this session): the `train` commands of ``python -m sesahand``."""


def register(sub) -> None:
    """Add this area's subcommands to the CLI's subparsers (placeholder: none yet)."""
