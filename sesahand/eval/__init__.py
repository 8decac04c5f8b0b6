"""Evaluation: image-label alignment check (MediaPipe hand keypoints), dataset QA, and the
FreiHAND 3D reconstruction metrics.

mediapipe is imported only when a detector is made, so this package imports without it.
"""

from .alignment import (PCK_LEVELS, AlignmentResult, HandAlignment, Thresholds, check_alignment, draw_overlay,
                        score_detections)
from .detector import SETUP_HINT, TASK_ENV, TASK_NAME, DetectedHand, HandKeypointDetector, build_hand_landmarker_task, find_task_path
from .metrics import evaluate, f_score, load_points_file, procrustes
from .qa import QaReport, run_qa

__all__ = [
    "PCK_LEVELS", "SETUP_HINT", "TASK_ENV", "TASK_NAME", "AlignmentResult", "DetectedHand", "HandAlignment", "HandKeypointDetector",
    "QaReport", "Thresholds", "build_hand_landmarker_task", "check_alignment", "draw_overlay", "evaluate",
    "f_score", "find_task_path", "load_points_file", "procrustes", "run_qa", "score_detections",
]
