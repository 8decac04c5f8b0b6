"""Real photos in: fit the hand model to the hands MediaPipe finds in a photograph.

``fit_hands(image, model, detector)`` returns one :class:`FittedHand` per detected hand
(MANO-convention parameters, camera, joints, residuals, verdict); :mod:`.framing` maps the
photo's pixel frame to any output size; :mod:`.output` writes pose files, labels, condition
maps and overlays. Method and limits: docs/fitting.md.
"""

from .fitter import HAND_CHOICES, MAX_HANDS, FitOptions, FittedHand, fit_detections, fit_hands, select_hands
from .framing import FRAMING_MODES, Framing
from .photo import DEFAULT_FOV_DEG, MAX_PHOTO_PIXELS, MAX_PHOTO_SIDE, Photo, load_photo, photo_intrinsics

__all__ = ["DEFAULT_FOV_DEG", "FRAMING_MODES", "HAND_CHOICES", "MAX_HANDS", "MAX_PHOTO_PIXELS",
           "MAX_PHOTO_SIDE", "FitOptions", "FittedHand", "Framing", "Photo", "fit_detections",
           "fit_hands", "load_photo", "photo_intrinsics", "select_hands"]
