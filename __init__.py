"""ComfyUI entry point of the SesaHand node pack (V3 node API).

ComfyUI imports this file as a package and calls :func:`comfy_entrypoint`. The ComfyUI
imports live inside the function so that importing this file never needs ComfyUI (pytest
imports it when it collects the repository).
"""

WEB_DIRECTORY = "./js"


async def comfy_entrypoint():
    """Return the pack's ``ComfyExtension`` (all SesaHand nodes); registers model folders."""
    from .nodes import SesaHandExtension

    return SesaHandExtension()
