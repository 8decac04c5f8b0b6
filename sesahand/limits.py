"""Every size limit of the pack, in one place.

A ComfyUI server may be reachable by others, and every widget value, pose file, command-line
argument and photo is untrusted: each image size, file size and count that can reach an
allocation is checked against these limits before anything is allocated, with a message that
names the input and the limit. Nodes, the CLI and the library all import them from here (the
node widgets use them as their ``max``), so the same input gets the same answer everywhere.

Raise a limit here, and only here, when a real use needs more (and the machine has the memory:
one 4096 x 4096 frame of condition maps takes about 1 GiB of float32 tensors).
"""

from __future__ import annotations

import math

#: Largest image side in pixels: the Render Conditions node's width/height maximum. Applies to
#: widgets, pose-file cameras, ``--size`` of the CLI and fitted photos.
MAX_IMAGE_SIDE = 4096
#: Smallest image side in pixels (one SD1.5 latent cell).
MIN_IMAGE_SIDE = 8
#: Image sides must be multiples of this (SD1.5 works on an 8-pixel latent grid).
IMAGE_MULTIPLE = 8
#: Largest image area in pixels (a 4096 x 4096 image).
MAX_IMAGE_PIXELS = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE

#: Largest batch of the Render Conditions node (images rendered in one run).
MAX_BATCH = 64
#: Most pixels rendered in one run of the node (all images of the batch together): 64 images
#: of 1024 x 1024 or 4 of 4096 x 4096, about 3 GiB of float32 condition maps.
MAX_BATCH_PIXELS = 64 * 1024 * 1024
#: Most frames a pose file may hold (each renders to one image).
MAX_POSE_FRAMES = 10_000
#: Most hands in one frame of a pose file (also in ``pose.schema.json``).
MAX_HANDS_PER_FRAME = 8

#: Most CLIP chunks of 77 tokens training encodes per caption (300 tokens of text); a longer
#: caption's tail is dropped with a warning. Batched captions of different chunk counts are
#: repeated to a common length as ComfyUI does (``comfy.conds.CONDCrossAttn``), at most 12 chunks.
MAX_PROMPT_CHUNKS = 4

#: Horizontal field of view, degrees: the Render Conditions node's range.
MIN_FOV_DEG = 5.0
MAX_FOV_DEG = 120.0

#: Largest pose file, and largest pose JSON typed into the Hand Pose node, in bytes.
MAX_POSE_FILE_BYTES = 16 * 1024 * 1024
#: Largest MediaPipe ``.task`` model file (hand_landmarker.task is about 8 MB).
MAX_TASK_FILE_BYTES = 64 * 1024 * 1024
#: Largest photo file read for fitting (bytes); its pixels are also held to MAX_IMAGE_PIXELS.
MAX_PHOTO_FILE_BYTES = 64 * 1024 * 1024
#: Largest FID Inception-v3 weights file (torch-fidelity's is about 91 MB).
MAX_INCEPTION_FILE_BYTES = 256 * 1024 * 1024


def _shown(value) -> str:
    """A value for a message, cut short (it may be an attacker's megabyte string)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:36] + "...'"


def check_image_size(width, height, what: str, *, multiple: int = IMAGE_MULTIPLE) -> tuple[int, int]:
    """Check an image size against the limits above; returns ``(width, height)`` as ints.

    Args:
        width, height: pixels; must be integers (bool and float are refused, also ``512.0``).
        what: the input they come from, used in the message (``"--size"``,
            ``"frames/0/camera"``, ``"Render Conditions width/height"``).
        multiple: both sides must be multiples of this (8 for SD1.5 sizes; 1 for photos).

    Raises:
        ValueError: naming ``what``, the bad value, the limit and the fix.
    """
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{what}: {name} {_shown(value)} is not a whole number of pixels; give an "
                             f"integer such as 512")
        if not MIN_IMAGE_SIDE <= value <= MAX_IMAGE_SIDE:
            raise ValueError(f"{what}: {name} {value} is outside {MIN_IMAGE_SIDE}..{MAX_IMAGE_SIDE} "
                             f"pixels (the largest image side this pack renders); give a smaller size")
        if value % multiple:
            raise ValueError(f"{what}: {name} {value} is not a multiple of {multiple}; Stable Diffusion "
                             "needs sizes like 512 or 768")
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f"{what}: {width}x{height} is more than {MAX_IMAGE_PIXELS} pixels; give a "
                         "smaller size")
    return width, height


def check_batch_pixels(width: int, height: int, count: int, what: str) -> None:
    """Check that ``count`` images of ``width`` x ``height`` fit in MAX_BATCH_PIXELS.

    Raises:
        ValueError: naming ``what``, the total and the limit.
    """
    total = width * height * count
    if total > MAX_BATCH_PIXELS:
        raise ValueError(f"{what}: {count} images of {width}x{height} are {total} pixels, more than the "
                         f"{MAX_BATCH_PIXELS} rendered at once; give a smaller batch or size")


def check_fov(fov_deg, what: str) -> float:
    """Check a horizontal field of view in degrees; returns it as a float.

    Raises:
        ValueError: naming ``what`` when it is not a finite number in MIN_FOV_DEG..MAX_FOV_DEG.
    """
    if isinstance(fov_deg, bool) or not isinstance(fov_deg, (int, float)) or not math.isfinite(fov_deg) \
            or not MIN_FOV_DEG <= fov_deg <= MAX_FOV_DEG:
        raise ValueError(f"{what}: {_shown(fov_deg)} is not a field of view between {MIN_FOV_DEG:g} and "
                         f"{MAX_FOV_DEG:g} degrees; give e.g. 40")
    return float(fov_deg)


def check_count(value, limit: int, what: str, *, minimum: int = 1) -> int:
    """Check a count (batch size, frames, hands) is an integer in ``minimum..limit``.

    Raises:
        ValueError: naming ``what`` and the allowed range.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= limit:
        raise ValueError(f"{what}: {_shown(value)} is not a whole number between {minimum} and {limit}")
    return value
