"""ComfyUI's frontend rules for a node's inputs and widgets, in one place.

What the browser frontend (``comfyui-frontend-package`` 1.27, shipped with ComfyUI 0.3.64)
builds from a node type's ``/object_info`` entry decides how a saved UI workflow is laid out:
which inputs are sockets and which widgets, their order, and the extra ``widgets_values``
stored after some widgets. The queue reads saved workflows with these rules
(:func:`sesahand.queue.ui_to_api`), ``tools/build_workflows.py`` writes workflows with them, and
the tests check the shipped files with them. Sources in the frontend: ``transformNodeDefV1ToV2``
(``src/schemas/nodeDef/migration.ts``), ``getOrderedInputSpecs``
(``src/utils/nodeDefOrderingUtil.ts``), ``#addInputs`` (``src/services/litegraphService.ts``),
``useIntWidget`` / ``useComboWidget`` and ``migrateWidgetsValues`` (``src/utils/litegraphUtil.ts``).

An ``/object_info`` input spec is ``[type, options]`` with ``type`` a type name or (old-style
combo) the list of choices; ``options`` may be absent. Nothing here imports ComfyUI.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Input types the frontend draws as widgets (its ``ComfyWidgets`` table, frontend 1.27);
#: inputs of other types are sockets only and have no entry in ``widgets_values``.
WIDGET_TYPES = frozenset({
    "INT", "FLOAT", "BOOLEAN", "STRING", "COMBO", "MARKDOWN", "IMAGEUPLOAD", "FILEUPLOAD",
    "COLOR", "IMAGECOMPARE", "TREESELECT", "MULTISELECT", "CHART", "GALLERIA", "SELECTBUTTON",
    "TEXTAREA",
})
#: INT inputs that get a ``control_after_generate`` widget when their spec does not say
#: otherwise (the frontend's legacy naming convention).
SEED_INPUTS = ("seed", "noise_seed")
#: The values of a ``control_after_generate`` widget.
CONTROL_MODES = ("fixed", "increment", "decrement", "randomize")
#: Combo options after which the frontend adds an upload button widget at the end of the node.
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload")
#: Frontend-only nodes (``isVirtualNode``): never sent to the server.
VIRTUAL_NODES = frozenset({"Reroute", "PrimitiveNode", "Note", "MarkdownNote"})
#: LiteGraph node modes left out of a prompt: 2 = never (muted), 4 = bypass.
MODE_MUTED = 2
MODE_BYPASS = 4


def input_kind(spec) -> str:
    """The type name of an input spec; ``"COMBO"`` for an old-style list of choices."""
    kind = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    return "COMBO" if isinstance(kind, list) else str(kind)


def input_options(spec) -> dict:
    """The options dict of an input spec (``{}`` when it has none)."""
    if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict):
        return spec[1]
    return {}


def combo_choices(spec) -> list:
    """The choices of a combo input spec (old style ``[[...], {}]`` or ``["COMBO", {"options"}]``)."""
    if isinstance(spec, (list, tuple)) and spec and isinstance(spec[0], list):
        return spec[0]
    return list(input_options(spec).get("options") or [])


@dataclass(frozen=True)
class NodeInput:
    """One input of a node as the frontend creates it.

    Attributes:
        name: the input name.
        type: :func:`input_kind` of ``spec``.
        spec: the ``/object_info`` spec the frontend uses (for a name listed as both required
            and optional: the optional one).
        optional: listed under ``optional`` (drawn as a hollow socket, ``shape`` 7 when saved).
    """

    name: str
    type: str
    spec: object
    optional: bool

    @property
    def options(self) -> dict:
        return input_options(self.spec)

    @property
    def widget(self) -> bool:
        """True for a widget input (with a ``widgets_values`` entry), False for a socket only."""
        return self.type in WIDGET_TYPES and not self.options.get("forceInput")

    @property
    def control_values(self) -> int:
        """How many ``widgets_values`` entries follow this widget's own value: 1 (the control
        mode) for an INT with ``control_after_generate`` (when the flag is absent: named in
        :data:`SEED_INPUTS`), 2 (mode and filter text) for a COMBO with the flag, else 0."""
        flag = self.options.get("control_after_generate")
        if self.type == "INT":
            return int(bool(flag) if flag is not None else self.name in SEED_INPUTS)
        return 2 if self.type == "COMBO" and flag else 0


def node_inputs(info: dict) -> list[NodeInput]:
    """Every input of a node of ``info`` (an ``/object_info`` entry) in the frontend's order.

    The frontend merges ``required`` then ``optional`` into one table by name, so an input
    listed in both takes the **optional** spec (and counts as optional) but keeps the table
    position of its required entry. With ``input_order``, the required names whose entry is
    not optional come first, then the optional names whose entry is optional, each in
    ``input_order``; inputs not named there follow in table order (``getOrderedInputSpecs``).
    Sockets and widgets are created from this list in that order.
    """
    inputs = info.get("input") or {}
    table: dict[str, NodeInput] = {}
    for category, optional in (("required", False), ("optional", True)):
        for name, spec in (inputs.get(category) or {}).items():
            table[name] = NodeInput(name, input_kind(spec), spec, optional)
    order = info.get("input_order")
    if not order:
        return list(table.values())
    ordered = [table[n] for n in order.get("required") or [] if n in table and not table[n].optional]
    ordered += [table[n] for n in order.get("optional") or [] if n in table and table[n].optional]
    seen = {i.name for i in ordered}
    return ordered + [i for i in table.values() if i.name not in seen]


def input_spec(info: dict, name: str):
    """The spec the frontend uses for input ``name`` of ``info``; KeyError if it has none."""
    for inp in node_inputs(info):
        if inp.name == name:
            return inp.spec
    raise KeyError(name)


def widget_slots(info: dict, legacy: bool = False) -> list[tuple[str | None, object]]:
    """One ``(input name, input spec)`` per ``widgets_values`` entry, as the frontend lays them
    out; the name is None for values that are not server inputs (``control_after_generate``,
    the combo control's filter, the upload button). ``legacy`` counts ``forceInput`` inputs too,
    as frontends before 1.16 saved a dummy value for them (their names are then None;
    ``migrateWidgetsValues``).
    """
    inputs = node_inputs(info)
    slots: list[tuple[str | None, object]] = []
    for inp in inputs:
        if inp.type not in WIDGET_TYPES:
            continue
        forced = bool(inp.options.get("forceInput"))
        if forced and not legacy:
            continue
        slots.append((None if forced else inp.name, inp.spec))
        slots += [(None, None)] * inp.control_values
    if any(not inp.optional and inp.type == "COMBO" and any(inp.options.get(o) is True for o in UPLOAD_OPTIONS)
           for inp in inputs):
        slots.append((None, None))  # the "choose file to upload" button, added by the frontend
    return slots


def widget_default(spec):
    """The value a fresh frontend widget of ``spec`` starts with (None: unknown)."""
    kind, options = input_kind(spec), input_options(spec)
    if "default" in options:
        return options["default"]
    if kind == "COMBO":
        choices = combo_choices(spec)
        return choices[0] if choices else None
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind)


def node_sort_key(node_id) -> tuple:
    """Sort key of prompt node ids: numeric ids by value, then other ids by text."""
    text = str(node_id)
    return (0, int(text), "") if text.isdigit() else (1, 0, text)
