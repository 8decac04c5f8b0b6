"""PLACEHOLDER (being written this session): semantics nodes."""

#: Node classes this module adds to the extension.
NODES: list = []
