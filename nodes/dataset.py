"""PLACEHOLDER (being written this session): dataset nodes."""

#: Node classes this module adds to the extension.
NODES: list = []
