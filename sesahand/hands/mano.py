"""MANO, for users who have it: ``MANO_RIGHT`` / ``MANO_LEFT`` (``.pkl`` or ``.npz``) through smplx.

MANO's files and smplx's code are under the MPI non-commercial licences; neither ships with
SesaHand. smplx is imported only inside this module's functions, never when ``sesahand`` is
imported, so the open default hand model works without it. Files are read with
:mod:`.safe_pickle` (no chumpy, no code from the file runs).

Conventions (see :mod:`.types`): ``hand_pose`` is 45 axis-angle values relative to the flat
hand (smplx ``flat_hand_mean=True``); ``global_orient`` rotates the hand about its wrist joint
(MANO's joint 0 of the shaped rest hand) and ``transl`` is added afterwards, exactly as smplx
does, giving camera-frame vertices in metres.

Left hand: the official ``MANO_LEFT.pkl`` stores ``shapedirs[:, 0, :]`` (the x part of the
shape blend shapes) equal to the right hand's instead of mirrored, so betas deform the left
hand wrongly (smplx issue #48). When both files are loaded and those columns agree (sum of
absolute differences < 1, the test used by HaMeR, ARCTIC and InterHand2.6M code), the left
column is negated, making the left hand with given betas the mirror image of the right.
With only a left file the check is impossible; its shapedirs are used as stored and a
warning says to put ``MANO_RIGHT`` next to it.

smplx prints "WARNING: You are using a MANO model, with only 10 shape coefficients." to
stdout when a model is built; that is expected (MANO has 10) and harmless.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .base import HandModel
from .safe_pickle import MANO_DOWNLOAD, load_mano_file
from .types import NUM_BETAS, NUM_HAND_POSE, SIDES, HandMesh, HandParams

log = logging.getLogger(__name__)

#: MANO vertex of each fingertip: thumb, index, middle, ring, little (as in smplx).
MANO_FINGERTIP_VERTICES = (744, 320, 443, 554, 671)

#: For each OpenPose keypoint, its row in ``cat(16 MANO joints, 5 fingertip vertices)``.
#: MANO joints: 0 wrist, 1-3 index, 4-6 middle, 7-9 little, 10-12 ring, 13-15 thumb.
OPENPOSE_FROM_MANO = (0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20)

MANO_FILE_STEMS = {"right": "MANO_RIGHT", "left": "MANO_LEFT"}
_SUFFIXES = (".pkl", ".npz")


def find_mano_files(folder) -> dict[str, Path]:
    """The MANO files in a folder: ``{'right': MANO_RIGHT.pkl|.npz, 'left': MANO_LEFT...}``.

    ``.pkl`` is preferred when both forms exist; sides without a file are left out (the dict
    may be empty).

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: MANO folder not found; create it and put "
                                f"MANO_RIGHT.pkl / MANO_LEFT.pkl from {MANO_DOWNLOAD} in it")
    found = {}
    for side, stem in MANO_FILE_STEMS.items():
        for suffix in _SUFFIXES:
            candidate = folder / f"{stem}{suffix}"
            if candidate.is_file():
                found[side] = candidate
                break
    return found


def _resolve_paths(paths) -> dict[str, Path]:
    if isinstance(paths, dict):
        unknown = set(paths) - set(SIDES)
        if unknown:
            raise ValueError(f"MANO paths: unknown sides {sorted(unknown)}; use 'right' / 'left'")
        resolved = {side: Path(p) for side, p in paths.items()}
    else:
        path = Path(paths)
        if path.is_dir():
            resolved = find_mano_files(path)
            if not resolved:
                raise FileNotFoundError(
                    f"{path}: no MANO_RIGHT.pkl / MANO_LEFT.pkl (or .npz) in this folder; "
                    f"download MANO from {MANO_DOWNLOAD} (free registration, non-commercial "
                    "licence) and put the files there")
            return resolved
        upper = path.name.upper()
        if "RIGHT" in upper:
            resolved = {"right": path}
        elif "LEFT" in upper:
            resolved = {"left": path}
        else:
            raise ValueError(f"{path}: cannot tell the hand side from the file name; name it "
                             "MANO_RIGHT.pkl / MANO_LEFT.pkl or pass {'right': ..., 'left': ...}")
    if not resolved:
        raise ValueError("MANO paths: empty; give a folder or {'right': ..., 'left': ...}")
    for side, p in resolved.items():
        if not p.is_file():
            raise FileNotFoundError(
                f"{p}: MANO {side}-hand file not found; download MANO from {MANO_DOWNLOAD} "
                f"and put {MANO_FILE_STEMS[side]}.pkl there")
    return resolved


def _import_smplx():
    try:
        import smplx
    except ImportError as exc:
        raise ImportError("the MANO hand model needs the smplx package: pip install "
                          "smplx==0.1.28 (its code is under the MPI non-commercial licence, "
                          "like MANO)") from exc
    return smplx


def _fix_left_shapedirs(right: dict, left: dict) -> bool:
    """Negate ``left['shapedirs'][:, 0, :]`` if it equals the right hand's (MANO_LEFT bug)."""
    n = min(right["shapedirs"].shape[2], left["shapedirs"].shape[2])
    diff = np.abs(left["shapedirs"][:, 0, :n] - right["shapedirs"][:, 0, :n]).sum()
    if diff >= 1.0:
        return False
    shapedirs = np.array(left["shapedirs"], dtype=np.float64)
    shapedirs[:, 0, :] *= -1.0
    left["shapedirs"] = shapedirs
    return True


def _outward_faces(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """``faces`` wound counter-clockwise seen from outside: flipped if the signed volume is < 0.

    The signed volume sum(a . (b x c)) / 6 about the centroid is positive for outward
    counter-clockwise triangles; MANO's wrist opening is small enough not to change its sign.
    """
    v = np.asarray(vertices, dtype=np.float64)
    v = v - v.mean(axis=0)
    a, b, c = (v[faces[:, k]] for k in range(3))
    volume = np.einsum("ij,ij->", a, np.cross(b, c)) / 6.0
    return faces if volume > 0 else faces[:, [0, 2, 1]]


class ManoHandModel(HandModel):
    """MANO through smplx, driven by :class:`HandParams`, returning camera-frame meshes.

    Args:
        paths: a folder holding ``MANO_RIGHT`` / ``MANO_LEFT`` (``.pkl`` or ``.npz``), one
            such file (side from its name), or ``{'right': path, 'left': path}`` (either
            side may be missing).
        device: torch device of the forward pass and of the returned vertices and joints.

    Raises:
        FileNotFoundError: no MANO file there, or a given file is missing.
        ImportError: smplx is not installed.
        UnsafePickleError, ValueError: a file is not a readable, well-formed MANO model
            (see :func:`.safe_pickle.load_mano_file`).

    The PCA pose prior of :meth:`sample_hand_pose` uses ``hands_coeffs`` (the PCA
    coefficients of MANO's training poses, in the official files) for the spread and limits
    of each component; without it, each coefficient gets unit spread within +-3.
    """

    name = "mano"

    def __init__(self, paths: str | Path | dict[str, str | Path],
                 device: str | torch.device = "cpu"):
        self.paths = _resolve_paths(paths)
        self.device = torch.device(device)
        smplx = _import_smplx()
        data = {side: load_mano_file(path) for side, path in self.paths.items()}
        if "right" in data and "left" in data:
            if _fix_left_shapedirs(data["right"], data["left"]):
                log.info("%s: applied the MANO left-hand shapedirs fix (x column negated)",
                         self.paths["left"])
        elif "left" in data:
            log.warning("%s: without MANO_RIGHT the left-hand shapedirs fix cannot be checked; "
                        "shapes (betas) may deform the left hand wrongly. Put MANO_RIGHT.pkl "
                        "in the same folder", self.paths["left"])
        self._layers = {}
        self._faces = {}
        self._components = {}
        self._mean = {}
        self._prior = {}
        for side, d in data.items():
            struct = smplx.utils.Struct(**d)
            self._layers[side] = smplx.MANO(
                model_path=str(self.paths[side]), data_struct=struct, is_rhand=side == "right",
                use_pca=False, flat_hand_mean=True, num_betas=NUM_BETAS,
                create_global_orient=False, create_hand_pose=False, create_betas=False,
                create_transl=False,
            ).to(self.device).eval()
            faces = _outward_faces(d["v_template"], np.asarray(d["f"], dtype=np.int64))
            self._faces[side] = torch.from_numpy(np.ascontiguousarray(faces))
            self._components[side] = torch.as_tensor(d["hands_components"], dtype=torch.float32)
            self._mean[side] = torch.as_tensor(d["hands_mean"], dtype=torch.float32)
            self._prior[side] = self._pca_prior(d, self.paths[side])

    @staticmethod
    def _pca_prior(data: dict, path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Spread (RMS about 0) and [min, max] of each PCA coefficient of the training poses."""
        coeffs = data.get("hands_coeffs")
        if coeffs is None:
            log.warning("%s has no hands_coeffs; the MANO pose prior uses unit spread per PCA "
                        "component, limited to +-3", path)
            ones = torch.ones(NUM_HAND_POSE)
            return ones, -3.0 * ones, 3.0 * ones
        c = torch.as_tensor(np.asarray(coeffs), dtype=torch.float32)
        return c.square().mean(0).sqrt(), c.min(0).values, c.max(0).values

    def _check_side(self, side: str) -> None:
        if side not in SIDES:
            raise ValueError(f"side: expected 'right' or 'left', got {side!r}")
        if side not in self._layers:
            loaded = next(iter(self.paths.values()))
            raise FileNotFoundError(
                f"no MANO {side}-hand model loaded: put {MANO_FILE_STEMS[side]}.pkl (from "
                f"{MANO_DOWNLOAD}) in {loaded.parent}")

    def faces(self, side: str) -> torch.Tensor:
        """Triangles (1538, 3) int64 on the CPU, counter-clockwise seen from outside the hand.

        MANO's ``f`` is used as stored if its template's signed volume is positive, else with
        each triangle's winding reversed (decided per file, so both sides come out outward).

        Raises:
            ValueError: unknown side. FileNotFoundError: that side's file was not loaded.
        """
        self._check_side(side)
        return self._faces[side]

    def forward(self, params: Sequence[HandParams]) -> list[HandMesh]:
        """Pose hands (any mix of sides); one :class:`HandMesh` per input, in order.

        Each side is posed in one smplx batch. Vertices (778, 3) and joints (21, 3) are
        float32 on ``device`` (faces: :meth:`faces`, on the CPU), camera frame, metres:
        ``v = R (v_rest - J0) + J0 + transl`` with ``R`` from ``global_orient`` and ``J0``
        the shaped rest wrist joint. Joints are MANO's 16 joints plus the fingertip vertices
        :data:`MANO_FINGERTIP_VERTICES`, in OpenPose order.

        Raises:
            TypeError: an item is not a HandParams. FileNotFoundError: a side whose MANO
            file was not loaded.
        """
        params = list(params)
        for i, p in enumerate(params):
            if not isinstance(p, HandParams):
                raise TypeError(f"params[{i}]: expected HandParams, got {type(p).__name__}")
        meshes: list[HandMesh | None] = [None] * len(params)
        for side in SIDES:
            rows = [i for i, p in enumerate(params) if p.side == side]
            if not rows:
                continue
            self._check_side(side)

            def stack(field: str) -> torch.Tensor:
                return torch.stack([getattr(params[i], field) for i in rows]).to(self.device)

            with torch.no_grad():
                out = self._layers[side](betas=stack("betas"), global_orient=stack("global_orient"),
                                         hand_pose=stack("hand_pose"), transl=stack("transl"))
            vertices = out.vertices
            tips = vertices[:, list(MANO_FINGERTIP_VERTICES)]
            joints = torch.cat([out.joints[:, :16], tips], dim=1)[:, list(OPENPOSE_FROM_MANO)]
            for k, i in enumerate(rows):
                meshes[i] = HandMesh(vertices=vertices[k].contiguous(), faces=self._faces[side],
                                     joints=joints[k].contiguous(), side=side, model=self.name,
                                     params=params[i])
        return meshes

    def keypoints(self, side: str, global_orient: torch.Tensor, hand_pose: torch.Tensor,
                  betas: torch.Tensor, transl: torch.Tensor) -> torch.Tensor:
        """Differentiable joints (N, 21, 3) float32, camera frame (see :meth:`HandModel.keypoints`):
        the smplx layer of ``side`` with gradients, joints as in :meth:`forward`.

        Raises: ValueError / FileNotFoundError for an unknown or unloaded side.
        """
        self._check_side(side)
        if hand_pose.ndim == 4:  # (N, 15, 3, 3) rotation matrices
            import roma

            hand_pose = roma.rotmat_to_rotvec(hand_pose).flatten(1)
        out = self._layers[side](**{k: v.to(self.device, torch.float32) for k, v in (
            ("betas", betas), ("global_orient", global_orient), ("hand_pose", hand_pose),
            ("transl", transl))})
        tips = out.vertices[:, list(MANO_FINGERTIP_VERTICES)]
        return torch.cat([out.joints[:, :16], tips], dim=1)[:, list(OPENPOSE_FROM_MANO)]

    def pca_prior(self, side: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """MANO's PCA pose prior of ``side``: ``hands_components`` (45, 45), ``hands_mean``
        (45,) and the spread (45,) of each coefficient over MANO's training poses (float32).

        Raises: ValueError / FileNotFoundError for an unknown or unloaded side.
        """
        self._check_side(side)
        return self._components[side], self._mean[side], self._prior[side][0]

    def hands_mean(self, side: str) -> torch.Tensor:
        """MANO's mean hand pose (45,) float32 CPU, radians, relative to the flat hand.

        Poses stored relative to the mean (smplx ``flat_hand_mean=False``, FreiHAND's fits)
        become our flat-relative ``hand_pose`` by adding it.

        Raises: ValueError (unknown side), FileNotFoundError (that side's file not loaded).
        """
        self._check_side(side)
        return self._mean[side].clone()

    def pca_to_hand_pose(self, coeffs: torch.Tensor, side: str) -> torch.Tensor:
        """Our ``hand_pose`` (45,) float32 CPU, radians, for MANO PCA coefficients.

        MANO's PCA space is centred on ``hands_mean`` (a relaxed, slightly bent hand), while
        our ``hand_pose`` is relative to the flat hand, so the result is
        ``coeffs @ hands_components[:n] + hands_mean`` (smplx with ``use_pca=True,
        flat_hand_mean=False`` poses the same hand).

        Args:
            coeffs: (n,) with 1 <= n <= 45, the first n PCA coefficients.

        Raises:
            ValueError: wrong size or non-finite values, unknown side.
            FileNotFoundError: that side's file was not loaded.
        """
        self._check_side(side)
        c = torch.as_tensor(coeffs, dtype=torch.float32).detach().cpu()
        if c.ndim != 1 or not 1 <= c.numel() <= NUM_HAND_POSE:
            raise ValueError("coeffs: expected 1 to 45 PCA coefficients, got shape "
                             f"{tuple(c.shape)}")
        if not torch.isfinite(c).all():
            raise ValueError("coeffs: NaN or infinite values; give finite numbers")
        return c @ self._components[side][: c.numel()] + self._mean[side]

    def sample_hand_pose(self, generator: torch.Generator, side: str,
                         n_components: int = NUM_HAND_POSE, scale: float = 1.0) -> torch.Tensor:
        """A random ``hand_pose`` (45,) float32 CPU from MANO's PCA pose prior.

        The MANO files hold no PCA variances, but the official ones hold ``hands_coeffs``, the
        coefficients of MANO's 1554 training poses: component k gets spread ``s_k`` (their
        root mean square) and limits ``[min_k, max_k]`` (their range, so poses stay within
        what real hands did). Coefficient k = clamp(z_k * scale * s_k, min_k, max_k) with
        z_k ~ N(0, 1); components past ``n_components`` are 0; the pose is
        :meth:`pca_to_hand_pose` of them (so ``scale=0`` gives ``hands_mean``).

        Args:
            generator: CPU torch generator (reproducible sampling).
            n_components: 1..45 leading components to vary.
            scale: >= 0 multiplier of the spread.

        Raises:
            ValueError: bad ``n_components`` / ``scale`` / side.
            FileNotFoundError: that side's file was not loaded.
        """
        self._check_side(side)
        if isinstance(n_components, bool) or not isinstance(n_components, int) \
                or not 1 <= n_components <= NUM_HAND_POSE:
            raise ValueError(f"n_components: expected an integer 1..45, got {n_components!r}")
        if not np.isfinite(scale) or scale < 0:
            raise ValueError(f"scale: expected a finite number >= 0, got {scale!r}")
        spread, low, high = (t[:n_components] for t in self._prior[side])
        z = torch.randn(n_components, generator=generator)
        coeffs = torch.maximum(torch.minimum(z * float(scale) * spread, high), low)
        return self.pca_to_hand_pose(coeffs, side)
