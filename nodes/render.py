"""Render room nodes: condition maps from posed hands, and the .glb export for Preview3D."""

from __future__ import annotations

import os

import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..sesahand import limits
from ..sesahand.hands import PoseSpec
from ..sesahand.hands.arm import ARM_KINDS
from ..sesahand.hands.export import export_glb
from ..sesahand.camera import Camera
from ..sesahand.pipeline import RenderedHands, render_scenes
from ..sesahand.render import BACKENDS
from ..sesahand.safe_paths import make_write_dir
from .hands import HandModelChoice, HandModelType, PoseType

#: Value: :class:`sesahand.pipeline.RenderedHands` (scenes with their cameras, meshes, labels).
HandsType = io.Custom("SESAHAND_HANDS")

MAX_SIZE = limits.MAX_IMAGE_SIDE


def size_error(width, height) -> str | None:
    """The message for a bad ``width`` / ``height`` widget value, or None when both are fine.

    Widget values reach ``validate_inputs`` unchecked (ComfyUI skips its own min/max checks for
    inputs named there, and calls it even when its type conversion failed, so a value may still
    be the string of a /prompt body); linked values arrive as None and are checked at run time.
    """
    for name, value in (("width", width), ("height", height)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{name} {str(value)[:40]!r} is not a whole number; give an integer such as 512"
        if value % 8 or not 64 <= value <= MAX_SIZE:
            return (f"{name} {value} is not a multiple of 8 between 64 and {MAX_SIZE}; "
                    "Stable Diffusion needs sizes like 512 or 768")
    return None


def _image(t: torch.Tensor) -> torch.Tensor:
    """A ComfyUI IMAGE (B, H, W, 3) float32 on the CPU; (B, H, W) maps become grey."""
    t = t.detach().to("cpu", torch.float32)
    if t.ndim == 3:
        t = t[..., None].expand(-1, -1, -1, 3)
    return t.contiguous()


class SesaHandRenderConditions(io.ComfyNode):
    """Render posed hands into pixel-aligned condition images, a mask and labelled meshes."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SesaHandRenderConditions",
            display_name="SesaHand Render Conditions",
            category="SesaHand/render",
            description="Poses the hands with the hand model and renders, per image of the batch, "
                        "the shaded mesh, depth, normals, OpenPose hand keypoints and the hand "
                        "mask in a pinhole camera. The hands output carries meshes, cameras "
                        "and labels. A pose file that gives its own camera overrides width, "
                        "height and fov.",
            inputs=[
                HandModelType.Input("hand_model", tooltip="Hand model from SesaHand Hand Model."),
                PoseType.Input("pose", tooltip="Hands to render, from SesaHand Hand Pose."),
                io.Int.Input("width", default=512, min=64, max=MAX_SIZE, step=8,
                             tooltip="Image width in pixels (a multiple of 8)."),
                io.Int.Input("height", default=512, min=64, max=MAX_SIZE, step=8,
                             tooltip="Image height in pixels (a multiple of 8)."),
                io.Float.Input("fov", default=40.0, min=limits.MIN_FOV_DEG, max=limits.MAX_FOV_DEG, step=0.5,
                               tooltip="Horizontal field of view of the camera in degrees; the "
                                       "principal point is the image centre."),
                io.Int.Input("batch_size", default=1, min=1, max=limits.MAX_BATCH,
                             tooltip="Number of images; random poses differ per image."),
                io.Combo.Input("backend", options=list(BACKENDS), default="auto",
                               tooltip="Rasteriser: moderngl (OpenGL, CPU or GPU) or nvdiffrast "
                                       "(CUDA, if installed); auto prefers nvdiffrast."),
                io.Combo.Input("arm", options=list(ARM_KINDS), default="none", optional=True,
                               tooltip="none: the hands alone; forearm / arm: the forearm or the "
                                       "whole arm (to the shoulder) of the open Anny body, "
                                       "attached at each wrist, in every map (the pose map "
                                       "gains OpenPose body limbs). Built once (minutes), "
                                       "then cached in models/sesahand."),
            ],
            outputs=[
                io.Image.Output("mesh", display_name="mesh",
                                tooltip="Shaded hand meshes on black."),
                io.Image.Output("depth", display_name="depth",
                                tooltip="Hand depth image (near is bright, background black), as "
                                        "hand-depth ControlNets expect."),
                io.Image.Output("normal", display_name="normal",
                                tooltip="Surface normals in camera space (NormalBAE colours)."),
                io.Image.Output("pose_image", display_name="pose",
                                tooltip="OpenPose hand keypoints and bones."),
                io.Mask.Output("mask", display_name="mask", tooltip="Union of the visible hands."),
                HandsType.Output("hands", display_name="hands",
                                 tooltip="Meshes, cameras and labels of every image."),
                io.Mask.Output("arm_mask", display_name="arm_mask",
                               tooltip="Union of the visible arms (empty with arm none)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, width=None, height=None, batch_size=None, fov=None, arm=None):
        error = size_error(width, height)
        if error:
            return error
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)):
            return f"batch_size {str(batch_size)[:40]!r} is not a whole number; give an integer such as 4"
        if batch_size is not None and not 1 <= batch_size <= limits.MAX_BATCH:
            return f"batch_size {batch_size} is outside 1..{limits.MAX_BATCH}"
        if None not in (width, height, batch_size):
            try:
                limits.check_batch_pixels(width, height, batch_size, "width x height x batch_size")
            except ValueError as exc:
                return str(exc)
        if fov is not None:
            try:
                limits.check_fov(fov, "fov")
            except ValueError as exc:
                return str(exc)
        if arm is not None and arm not in ARM_KINDS:
            return f"arm {str(arm)[:40]!r} is unknown; choose one of {list(ARM_KINDS)}"
        return True

    @classmethod
    def execute(cls, hand_model: HandModelChoice, pose: PoseSpec, width: int, height: int,
                fov: float, batch_size: int, backend: str, arm: str = "none") -> io.NodeOutput:
        camera = Camera.default(width, height, fov)
        scenes = hand_model.resolve(pose, camera, batch_size)
        # A pose file's own camera replaces width and height: check the size it asks for.
        limits.check_batch_pixels(scenes[0].camera.width, scenes[0].camera.height, len(scenes), "pose")
        bar = comfy.utils.ProgressBar(len(scenes))
        conditions, hands = render_scenes(
            hand_model.model, scenes, backend=backend,
            progress=lambda done, total: bar.update_absolute(done, total), arm=arm,
            arm_cache_dir=folder_paths.get_folder_paths("sesahand")[0])
        return io.NodeOutput(
            _image(conditions.mesh), _image(conditions.depth_image), _image(conditions.normal),
            _image(conditions.pose), conditions.mask.detach().to("cpu", torch.float32).contiguous(),
            hands, conditions.arm_mask.detach().to("cpu", torch.float32).contiguous(),
        )


class SesaHandExportMesh(io.ComfyNode):
    """Save the rendered hands as .glb files in the output folder (for core Preview 3D)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SesaHandExportMesh",
            display_name="SesaHand Export Mesh",
            category="SesaHand/render",
            description="Writes one .glb per image of the batch (all its hands, camera frame, "
                        "metres) into the output folder. Connect model_file to core Preview 3D "
                        "to look at the first one.",
            inputs=[
                HandsType.Input("hands", tooltip="Rendered hands from SesaHand Render Conditions."),
                io.String.Input("filename_prefix", default="sesahand/hands",
                                tooltip="File name prefix inside the output folder; may include "
                                        "subfolders and %year%, %month%, %day% variables."),
            ],
            outputs=[
                io.String.Output("model_file", display_name="model_file",
                                 tooltip="Path of the first .glb relative to the output folder, "
                                         "as Preview 3D expects."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, hands: RenderedHands, filename_prefix: str) -> io.NodeOutput:
        output_dir = folder_paths.get_output_directory()
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, output_dir)
        # ComfyUI checks the prefix as written; a linked subfolder must not lead out either.
        folder = make_write_dir(folder, inside=output_dir, what="filename_prefix")
        saved = []
        for meshes in hands.meshes:
            name = f"{filename}_{counter:05}_.glb"
            export_glb(meshes, os.path.join(folder, name))
            saved.append({"filename": name, "subfolder": subfolder, "type": "output"})
            counter += 1
        model_file = os.path.join(saved[0]["subfolder"], saved[0]["filename"]).replace("\\", "/")
        return io.NodeOutput(model_file, ui={"3d": saved})
