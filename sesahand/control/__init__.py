"""Control room: hierarchical structural fusion (SF) for SD1.5 ControlNets, without ComfyUI.

``fusion`` holds the math of eq. SF-1..3 (chunked self-attention maps, psi', refinement of the
control features before the zero convolutions) for any ControlNet forward to call;
``metadata`` reads and writes SesaHand's settings in a ControlNet's safetensors header;
``layout`` names a ControlNet's weights in the original (``control_model.*``) and diffusers key
layouts, converts between them and names the family of a file that is neither.
"""

from . import layout
from .fusion import (CPU_CHUNK_ELEMENTS, FUSION_MODES, HIERARCHIES, FusionSettings, SelfAttentionMaps,
                     chunk_memory_bytes, coarsest_grid, default_chunk_elements, grid_cells, pool_cells,
                     refine, refine_gate, refine_tokens)
from .metadata import (ATTENTION_LAYERS, RENDER_STYLES, ControlMetadata, parse_control_metadata,
                       read_control_metadata)

__all__ = ["ATTENTION_LAYERS", "CPU_CHUNK_ELEMENTS", "FUSION_MODES", "HIERARCHIES", "RENDER_STYLES",
           "ControlMetadata", "FusionSettings", "SelfAttentionMaps", "chunk_memory_bytes", "coarsest_grid",
           "default_chunk_elements", "grid_cells", "parse_control_metadata", "pool_cells",
           "read_control_metadata", "refine", "refine_gate", "refine_tokens"]
