"""SesaHand nodes for ComfyUI (V3 API): the one extension listing every node, and model folders.

Model folders (registered the IPAdapter way: paths the user gave in ``extra_model_paths.yaml``
are kept and come first, ``ComfyUI/models/<name>`` is added after them):

* ``mano``: the user's MANO files (``MANO_RIGHT`` / ``MANO_LEFT``, ``.pkl`` or ``.npz``);
  never shipped.
* ``sesahand``: SesaHand's caches (the open hand's compact model data) and adapter weights.
* ``LLM``: local language / vision-language model folders (every file is listed).
"""

import os

import folder_paths
from comfy_api.latest import ComfyExtension, io
from typing_extensions import override

from . import alignment, dataset, editor, fit, semantics
from .attention import SesaHandHandAttention, SesaHandHandAttentionSampler
from .control import SesaHandApplyHandControl, SesaHandLoadControlNet
from .hands import SesaHandHandModel, SesaHandHandPose
from .render import SesaHandExportMesh, SesaHandRenderConditions

#: Model folder name -> file extensions listed in node combos (empty: every file).
MODEL_FOLDERS = {
    "mano": {".pkl", ".npz"},
    "sesahand": set(folder_paths.supported_pt_extensions),
    "LLM": set(),
}


def register_model_folders() -> None:
    """Add the pack's model folders to ``folder_paths``, keeping user-configured paths first."""
    for name, extensions in MODEL_FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, name)
        paths = folder_paths.folder_names_and_paths.get(name, ([], set()))[0]
        if default not in paths:
            paths.append(default)
        folder_paths.folder_names_and_paths[name] = (paths, extensions)


register_model_folders()


class SesaHandExtension(ComfyExtension):
    """Every SesaHand node."""

    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [SesaHandHandModel, SesaHandHandPose, SesaHandRenderConditions, SesaHandExportMesh,
                SesaHandHandAttention, SesaHandHandAttentionSampler,
                SesaHandLoadControlNet, SesaHandApplyHandControl,
                *semantics.NODES, *dataset.NODES, *alignment.NODES, *editor.NODES, *fit.NODES]
