"""SesaHand: labelled hand images from 3D hand meshes (library; no ComfyUI imports).

Room map: one line per room, what it owns, and the rooms it may import (relative imports;
"later" marks imports made inside a function). Base rooms first; a room never imports one
listed below it except where noted. ``nodes/`` (outside this package) may import any room;
nothing here imports ``nodes/`` or ComfyUI. ``tests/test_rooms.py`` checks that the rooms import
each other without a cycle.

* ``io``: atomic file writes, the image pixel conversion float 0..1 <-> uint8 (``to_uint8``,
  ``to_float``). Imports no room.
* ``limits``: every size limit (image sides, pixels, file sizes, counts). Imports no room.
* ``safe_paths``: the rule for untrusted file paths (inside their folder, regular, capped). Imports no room.
* ``comfy_graph``: ComfyUI frontend widget rules (input order, widget slots, control values,
  seed names, defaults). Imports no room.
* ``camera``: ``Camera``, the pinhole camera of one image (OpenCV convention). Imports no room.
* ``hands``: hand models (open Anny, MANO), pose sources, ``HandParams``/``HandMesh``/``HandScene``
  types and the hand colours ``HAND_COLORS``, mesh export. Imports camera, io, limits, safe_paths.
* ``render``: rasterisers, condition maps, hand labels. Imports camera, io, hands (types, colours).
* ``pipeline``: the render job shared by the CLI and the nodes (scenes -> conditions, labels).
  Imports hands, render.
* ``attention``: hand structure attention enhancement AE (hand tokens, logit bias). Imports no room.
* ``control``: structural fusion SF math, SesaHand settings in ControlNet files. Imports no room.
* ``semantics``: behaviour semantics (caption -> extraction -> prompt, hand terms). Imports attention, io.
* ``data``: the dataset folder format, writer, reader, check/repair, FreiHAND export.
  Imports io, safe_paths, hands (later).
* ``eval``: image-label alignment (hand keypoint detector), dataset QA, 3D metrics.
  Imports io, render, data (later).
* ``fit``: photo fitting (hand meshes fitted to photos). Imports camera, hands, io, limits, pipeline,
  render, eval, cli (later).
* ``train``: ControlNet training with SF and AE, config, export. Imports attention, control,
  hands, io, data (later), pipeline (later), eval and fit (later, photo poses).
* ``queue``: batch queueing on ComfyUI servers (UI -> API workflows, manifest, HTTP/websocket
  client, run loop). Imports comfy_graph, io.
* ``cli``: ``python -m sesahand`` (the ``render`` command; each room's ``commands`` module adds
  its own). Imports any room, later.
"""

__version__ = "0.1.0"
