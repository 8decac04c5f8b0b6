"""SesaHand: labelled hand images from 3D hand meshes (library; no ComfyUI imports).

Room map: one line per room, what it owns, and the rooms it may import (relative imports;
"later" marks imports made inside a function). Base rooms first; a room never imports one
listed below it except where noted. ``nodes/`` (outside this package) may import any room;
nothing here imports ``nodes/`` or ComfyUI.

* ``io``: atomic file writes. Imports no room.
* ``limits``: every size limit (image sides, pixels, file sizes, counts). Imports no room.
* ``safe_paths``: the rule for untrusted file paths (inside their folder, regular, capped). Imports no room.
* ``comfy_graph``: ComfyUI frontend widget rules (input order, widget slots, control values,
  seed names, defaults). Imports no room.
* ``hands``: hand models (open Anny, MANO), pose sources, ``Camera``/``HandMesh`` types, mesh
  export. Imports io, limits, safe_paths, render (``render.maps`` colours: a cycle with render
  until the camera gets a home below both).
* ``render``: rasterisers, condition maps, hand labels. Imports io, hands (types).
* ``pipeline``: the render job shared by the CLI and the nodes (scenes -> conditions, labels).
  Imports hands, render.
* ``attention``: hand structure attention enhancement AE (hand tokens, logit bias). Imports no room.
* ``control``: structural fusion SF math, SesaHand settings in ControlNet files. Imports no room.
* ``semantics``: behaviour semantics (caption -> extraction -> prompt, hand terms). Imports attention, io.
* ``data``: the dataset folder format, writer, reader, check/repair, FreiHAND export.
  Imports io, safe_paths, hands (later).
* ``eval``: image-label alignment (hand keypoint detector), dataset QA, 3D metrics.
  Imports io, render, data (later).
* ``fit``: photo fitting (hand meshes fitted to photos). Imports hands, render, eval.
* ``train``: ControlNet training with SF and AE, config, export. Imports attention, control,
  hands, io, data (later), pipeline (later).
* ``queue``: batch queueing on ComfyUI servers (UI -> API workflows, manifest, HTTP/websocket
  client, run loop). Imports comfy_graph, io.
* ``cli``: ``python -m sesahand`` (the ``render`` command; each room's ``commands`` module adds
  its own). Imports any room, later.
"""

__version__ = "0.1.0"
