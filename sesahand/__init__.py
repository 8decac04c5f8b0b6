"""SesaHand: labelled hand images from 3D hand meshes (library; no ComfyUI imports).

Rooms: ``hands`` (hand models, poses), ``render`` (cameras, rasterisers, condition maps).
"""

__version__ = "0.1.0"
