"""Reading photographs for fitting: size caps, EXIF rotation and focal length, colour modes.

Every photo becomes an (H, W, 3) uint8 RGB array in its upright orientation:

* The file size (``sesahand.limits.MAX_PHOTO_FILE_BYTES``) and the image size are checked
  from the file header *before* any pixel is decoded: a photo whose side exceeds
  :data:`MAX_PHOTO_SIDE` or whose pixel count exceeds :data:`MAX_PHOTO_PIXELS` (the pack's
  image limits, ``sesahand.limits``) is refused (no unbounded allocation); so is one whose
  side is below ``sesahand.limits.MIN_IMAGE_SIDE``.
* EXIF orientation is applied (``ImageOps.exif_transpose``), so the keypoints and the camera
  refer to the picture as people see it.
* Colour modes: 16-bit and 32-bit greyscale are scaled to 8 bits (not clipped), CMYK / YCbCr /
  palette / greyscale become RGB, and transparency is composited over white.
* Truncated or corrupt files raise ``ValueError`` naming the file; nothing is kept.

The camera's focal length comes from EXIF ``FocalLengthIn35mmFilm`` when present (35 mm
equivalent, converted through the diagonal: ``f_px = f35 * diag_px / 43.27``), else from a
field of view (:data:`DEFAULT_FOV_DEG` across the photo's longer side, or the caller's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..io import pil_to_rgb, to_uint8
from ..limits import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, MAX_PHOTO_FILE_BYTES, check_fov, check_image_size

#: Longest accepted photo side in pixels (the pack's image limit).
MAX_PHOTO_SIDE = MAX_IMAGE_SIDE
#: Most pixels accepted in one photo.
MAX_PHOTO_PIXELS = MAX_IMAGE_PIXELS

#: Field of view (degrees) across the photo's longer side when EXIF gives no focal length:
#: between a phone's main camera (about 65-70 degrees) and a cropped or zoomed shot.
DEFAULT_FOV_DEG = 50.0

#: Diagonal of a 35 mm film frame (36 x 24 mm), millimetres.
FILM_DIAGONAL_MM = math.hypot(36.0, 24.0)

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


@dataclass
class Photo:
    """An upright RGB photo and what its file says about the camera.

    Attributes:
        pixels: (H, W, 3) uint8 RGB, EXIF orientation applied.
        focal_35mm: EXIF ``FocalLengthIn35mmFilm`` in millimetres, or None.
        name: where it came from (file name), for messages.
    """

    pixels: np.ndarray
    focal_35mm: float | None = None
    name: str = "image"

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


def check_photo_size(width: int, height: int, name: str = "image") -> None:
    """Refuse photo sizes outside the pack's image limits (``sesahand.limits.check_image_size``,
    any multiple).

    Raises: ValueError naming the photo, the size, the limit and what to do.
    """
    check_image_size(int(width), int(height), f"{name} ({width}x{height} photo)", multiple=1)


def load_photo(source: str | Path | BinaryIO, name: str | None = None) -> Photo:
    """Read a photo file into an upright RGB :class:`Photo` (see the module docstring).

    Args:
        source: a path or an open binary file.
        name: label for messages (default: the file name).

    Raises:
        ValueError: not an image, corrupt or truncated, or outside the size limits (checked
            before decoding).
        FileNotFoundError: the path does not exist.
    """
    label = name or (Path(source).name if isinstance(source, (str, Path)) else "image")
    if isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise FileNotFoundError(f"{label}: no such image file")
        if Path(source).stat().st_size > MAX_PHOTO_FILE_BYTES:
            raise ValueError(f"{label}: the file is larger than {MAX_PHOTO_FILE_BYTES // (1024 * 1024)} MiB, "
                             "the limit for photos; downscale or re-encode it")
    try:
        with Image.open(source) as image:
            check_photo_size(*image.size, name=label)
            image.load()
            focal = None
            try:
                exif = image.getexif()
                value = exif.get_ifd(0x8769).get(0xA405) or exif.get(0xA405)
                if value:
                    focal = float(value)
            except (AttributeError, KeyError, TypeError, ValueError):
                focal = None
            upright = ImageOps.exif_transpose(image)
            pixels = np.asarray(pil_to_rgb(upright))
    except Image.DecompressionBombError as exc:  # Pillow refuses first beyond 2x its own limit
        raise ValueError(f"{label}: larger than {MAX_PHOTO_PIXELS} pixels, the limit for photos "
                         f"({exc}); downscale it first") from None
    except UnidentifiedImageError:
        raise ValueError(f"{label}: not an image Pillow can read (JPEG, PNG, WebP, BMP, TIFF)") from None
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"{label}: the image is corrupt or truncated ({type(exc).__name__}); "
                         "re-export or re-download it") from None
    return Photo(pixels=np.ascontiguousarray(pixels), focal_35mm=focal if focal and focal > 0 else None,
                 name=label)


def as_rgb8(image, name: str = "image") -> np.ndarray:
    """An in-memory image as (H, W, 3) uint8 RGB, size-checked.

    Args:
        image: (H, W, 3) or (H, W, 4) uint8, or float in 0..1 (a ComfyUI IMAGE frame); alpha
            is composited over white.

    Raises: ValueError for other shapes or dtypes, non-finite values or sizes outside the limits.
    """
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"{name}: expected an (H, W, 3) RGB image, got shape {a.shape}")
    check_photo_size(a.shape[1], a.shape[0], name=name)
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all():
            raise ValueError(f"{name}: expected uint8 or finite float 0..1 pixels, got {a.dtype}")
        a = to_uint8(a)
    if a.shape[2] == 4:
        alpha = a[..., 3:4].astype(np.float32) / 255.0
        a = np.round(a[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(a)


def photo_intrinsics(width: int, height: int, *, fov_deg: float | None = None,
                     focal_35mm: float | None = None) -> np.ndarray:
    """Pinhole ``K`` (3, 3) float64 for a photo of ``width`` x ``height`` pixels.

    The principal point is the image centre (pixel centres at +0.5, so ``cx = W / 2``). The
    focal length, in order of preference: ``focal_35mm`` (EXIF, 35 mm equivalent, through
    the diagonal), else ``fov_deg`` (degrees across the longer side), else
    :data:`DEFAULT_FOV_DEG`.

    Raises: ValueError for a field of view outside the pack's range (``sesahand.limits``).
    """
    if focal_35mm:
        f = float(focal_35mm) * math.hypot(width, height) / FILM_DIAGONAL_MM
    else:
        fov = DEFAULT_FOV_DEG if fov_deg is None else check_fov(fov_deg, "field of view (fov)")
        f = 0.5 * max(width, height) / math.tan(math.radians(fov) / 2.0)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def list_photos(folder: str | Path) -> list[Path]:
    """The photo files directly inside ``folder`` (by suffix, sorted by name; hidden files skipped).

    Raises: FileNotFoundError if ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder of photos")
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file() and not p.name.startswith("."))
