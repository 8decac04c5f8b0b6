"""PLACEHOLDER (being written this session): alignment nodes."""

#: Node classes this module adds to the extension.
NODES: list = []
