// SesaHand Hand Pose Editor: a 3D hand-pose editor inside the node (ComfyUI frontend 1.27).
//
// The pack's server does every conversion (nodes/editor.py): the editor keeps an anatomical
// state (joint angles in degrees within sesahand/hands/anatomy.py's limits, wrist yaw/pitch/roll,
// image box, camera), POSTs it to /sesahand/editor/resolve and gets back the pack's pose JSON
// and the meshes posed from exactly that JSON (the path SesaHand Render Conditions takes), so
// what is shown is what is rendered. The pose JSON lives in the node's `pose_json` widget: it is
// saved with the workflow and fed to the node. Hand edits of that text go through
// /sesahand/editor/parse: an invalid text shows its error and the editor keeps the last valid
// pose. three.js is vendored in web_vendor/three and served by the pack (no CDN).

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_TYPE = "SesaHandHandPoseEditor";
const VENDOR = new URL("../../sesahand/vendor/three/", import.meta.url).href;
const NEAR = 0.01;
const FAR = 100.0;
const HAND_COLORS = { right: 0x6699ff, left: 0xff8c59 }; // sesahand/render/maps.py HAND_COLORS
const FINGERS = ["thumb", "index", "middle", "ring", "little"];
// OpenPose joint index of each editable joint: [finger, joint angle names driven by a vertical
// drag, by a horizontal drag], and the joint one further out along the finger (bone end).
const JOINT_TABLE = [
  { op: 1, finger: "thumb", label: "thumb CMC", flex: "abduct", side: "cross", next: 2 },
  { op: 2, finger: "thumb", label: "thumb MCP", flex: "mcp", side: null, next: 3 },
  { op: 3, finger: "thumb", label: "thumb IP", flex: "ip", side: null, next: 4 },
  ...["index", "middle", "ring", "little"].flatMap((finger, k) => [
    { op: 5 + 4 * k, finger, label: `${finger} MCP`, flex: "mcp", side: "spread", next: 6 + 4 * k },
    { op: 6 + 4 * k, finger, label: `${finger} PIP`, flex: "pip", side: null, next: 7 + 4 * k },
    { op: 7 + 4 * k, finger, label: `${finger} DIP`, flex: "dip", side: null, next: 8 + 4 * k },
  ]),
];
const HELP = `
<b>SesaHand hand-pose editor</b>
<table>
<tr><td>Drag a finger</td><td>bend the joint under the pointer (Shift: spread / thumb swing)</td></tr>
<tr><td>Click a joint</td><td>select it; its sliders and limit gauge light up</td></tr>
<tr><td>Drag elsewhere</td><td>orbit &nbsp; Right-drag: pan &nbsp; Wheel: zoom</td></tr>
<tr><td>C</td><td>camera view: the exact output image (drag the hand to move its box, wheel to resize)</td></tr>
<tr><td>F</td><td>frame the hands</td></tr>
<tr><td>Arrows</td><td>bend / spread the selected joint by 1&deg; (Shift: 5&deg;)</td></tr>
<tr><td>Tab / Shift+Tab</td><td>next / previous joint; 1, 2: select hand</td></tr>
<tr><td>Ctrl+Z, Ctrl+Shift+Z / Ctrl+Y</td><td>undo, redo</td></tr>
<tr><td>M / R</td><td>mirror the selected hand / reset the pose</td></tr>
<tr><td>H or ?</td><td>this help; Esc closes it</td></tr>
</table>
Joint markers: green within limits, orange near a limit, red at a limit (angles are clamped to
the anatomical limits of the pack; a straight finger at 0&deg; is not flagged). The text box above the editor is the pose JSON the node
uses; edit it by hand if you like.`;

let threePromise = null;
function loadThree() {
  threePromise ??= Promise.all([
    import(VENDOR + "three.module.js"),
    import(VENDOR + "OrbitControls.js"),
  ]).then(([THREE, controls]) => ({ THREE, OrbitControls: controls.OrbitControls }));
  return threePromise;
}

let infoPromise = null;
function loadInfo() {
  infoPromise ??= getJSON("/sesahand/editor/info");
  return infoPromise;
}

async function getJSON(route) {
  const response = await api.fetchApi(route);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ?? `HTTP ${response.status}`);
  return body;
}

async function postJSON(route, data) {
  const response = await api.fetchApi(route, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(data),
  });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ?? `HTTP ${response.status}`);
  return body;
}

function decode(b64, Type) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Type(bytes.buffer);
}

const clone = (x) => JSON.parse(JSON.stringify(x));
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "style") node.style.cssText = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
};

const STYLE = `
.sesahand-editor { position:relative; display:flex; flex-direction:column; gap:4px; font:12px sans-serif; color:#ddd;
  background:#1e1e1e; border-radius:6px; padding:4px; box-sizing:border-box; outline:none; }
.sesahand-editor:focus-within { box-shadow:0 0 0 1px #6699ff; }
.sesahand-editor .keys { position:absolute; width:1px; height:1px; opacity:0; border:0; padding:0; pointer-events:none; }
.sesahand-editor .bar { display:flex; flex-wrap:wrap; gap:3px; align-items:center; }
.sesahand-editor button, .sesahand-editor select { background:#333; color:#ddd; border:1px solid #555;
  border-radius:4px; padding:2px 6px; font-size:12px; cursor:pointer; }
.sesahand-editor button.on { background:#3b5b9a; border-color:#6699ff; }
.sesahand-editor .main { display:flex; gap:4px; flex:1; min-height:0; }
.sesahand-editor .view { position:relative; flex:1; min-width:0; background:#111; border-radius:4px; overflow:hidden; }
.sesahand-editor canvas { display:block; width:100%; height:100%; touch-action:none; }
.sesahand-editor .panel { width:230px; overflow-y:auto; padding-right:2px; }
.sesahand-editor .group { border-top:1px solid #333; padding:2px 0; }
.sesahand-editor .group b { display:block; margin:2px 0; text-transform:capitalize; }
.sesahand-editor .row { display:grid; grid-template-columns:44px 1fr 48px; gap:3px; align-items:center; }
.sesahand-editor .row.sel { background:#2c3a55; border-radius:3px; }
.sesahand-editor .row input[type=range] { width:100%; accent-color:#6a6; }
.sesahand-editor .row.near input[type=range] { accent-color:#e90; }
.sesahand-editor .row.limit input[type=range] { accent-color:#e33; }
.sesahand-editor .row input[type=number] { width:46px; background:#222; color:#ddd; border:1px solid #444; font-size:11px; }
.sesahand-editor .status { min-height:16px; font-size:11px; white-space:pre-wrap; }
.sesahand-editor .status.error { color:#f66; } .sesahand-editor .status.warn { color:#fb4; }
.sesahand-editor .gauge { position:absolute; z-index:2; left:6px; bottom:6px; right:6px; pointer-events:none;
  background:rgba(0,0,0,.6); border-radius:4px; padding:3px 6px; display:none; }
.sesahand-editor .gauge .track { position:relative; height:6px; background:#444; border-radius:3px; margin-top:3px; }
.sesahand-editor .gauge .fill { position:absolute; top:-2px; width:4px; height:10px; border-radius:2px; }
.sesahand-editor .help { position:absolute; z-index:3; inset:6px; background:rgba(10,10,10,.92); border-radius:6px;
  padding:8px; overflow:auto; display:none; font-size:12px; line-height:1.4; }
.sesahand-editor .help td { padding:1px 6px 1px 0; vertical-align:top; }
.sesahand-editor .help td:first-child { white-space:nowrap; color:#9bf; }
.sesahand-editor .hint { position:absolute; top:4px; left:6px; font-size:11px; color:#999; pointer-events:none; }
`;

function injectStyle() {
  if (document.getElementById("sesahand-editor-style")) return;
  document.head.append(el("style", { id: "sesahand-editor-style" }, STYLE));
}

class HandPoseEditor {
  constructor(node, poseWidget) {
    this.node = node;
    this.poseWidget = poseWidget;
    this.state = null;       // last valid editor state
    this.lastPoseText = "";  // pose JSON of the last valid state
    this.undoStack = [];
    this.redoStack = [];
    this.hand = 0;           // selected hand index
    this.joint = null;       // selected JOINT_TABLE entry
    this.cameraView = false;
    this.meshes = [];        // {side, vertices Float32Array, joints [[x,y,z]]}
    this.camera = null;      // {K, width, height} of the last resolve
    this.faces = new Map();  // "model|mano|side" -> Uint32Array
    this.pending = null;     // resolve waiting to be sent
    this.inFlight = null;
    this.build();
  }

  // ----------------------------------------------------------------------------- DOM
  build() {
    injectStyle();
    const button = (label, title, fn) => el("button", { title, onclick: (e) => { e.preventDefault(); this.focus(); fn(); } }, label);
    this.sideButtons = {
      right: button("Right", "one right hand", () => this.setHands("right")),
      left: button("Left", "one left hand", () => this.setHands("left")),
      both: button("Both", "a right and a left hand", () => this.setHands("both")),
    };
    this.presetSelect = el("select", { title: "start the selected hand from a preset" },
      el("option", { value: "" }, "preset..."));
    this.presetSelect.addEventListener("change", () => {
      if (this.presetSelect.value) this.applyPreset(this.presetSelect.value);
      this.presetSelect.value = "";
      this.focus();
    });
    this.camButton = button("Camera view", "C: look through the output camera", () => this.toggleCameraView());
    // Keyboard focus sits in a hidden read-only <input>: ComfyUI's workflow undo (a window
    // capture listener that runs before any of ours) leaves keys typed into inputs alone.
    this.keys = el("input", { class: "keys", readonly: "", "aria-label": "hand-pose editor keyboard" });
    this.root = el("div", { class: "sesahand-editor" }, this.keys,
      el("div", { class: "bar" },
        this.sideButtons.right, this.sideButtons.left, this.sideButtons.both, this.presetSelect,
        button("Mirror", "M: mirror the selected hand", () => this.mirror()),
        button("Reset", "R: reset the pose", () => this.reset()),
        button("Undo", "Ctrl+Z", () => this.undo()),
        button("Redo", "Ctrl+Shift+Z / Ctrl+Y", () => this.redo()),
        this.camButton,
        button("Frame", "F: frame the hands", () => this.frame()),
        button("?", "H: help", () => this.toggleHelp())),
      el("div", { class: "main" },
        this.view = el("div", { class: "view" },
          this.hint = el("div", { class: "hint" }, "loading..."),
          this.gauge = el("div", { class: "gauge" }),
          this.help = el("div", { class: "help" })),
        this.panel = el("div", { class: "panel" })),
      this.status = el("div", { class: "status" }));
    this.help.innerHTML = HELP;
    this.root.addEventListener("keydown", (e) => this.onKey(e));
    // The hand model is chosen in another node: look again whenever the pointer comes back.
    this.root.addEventListener("pointerenter", () => this.checkModel());
    // Keep the keyboard in the editor: a click on the view would otherwise move the focus to
    // the page (mousedown's default), where Ctrl+Z is ComfyUI's workflow undo.
    this.view.addEventListener("mousedown", (e) => { e.preventDefault(); this.focus(); });
    for (const type of ["wheel", "contextmenu"]) {
      this.view.addEventListener(type, (e) => { e.preventDefault(); e.stopPropagation(); }, { passive: false });
    }
  }

  async init() {
    try {
      const [{ THREE, OrbitControls }, info] = await Promise.all([loadThree(), loadInfo()]);
      this.THREE = THREE;
      this.info = info;
      for (const name of Object.keys(info.presets)) {
        this.presetSelect.append(el("option", { value: name }, name.replace(/_/g, " ")));
      }
      this.setupScene(OrbitControls);
      this.hint.textContent = "";
      this.ready = true;
    } catch (error) {
      this.showStatus(`The 3D editor could not start: ${error.message}`, "error");
      console.error("SesaHand hand-pose editor:", error);
      throw error;
    }
  }

  setupScene(OrbitControls) {
    const THREE = this.THREE;
    this.canvas = el("canvas");
    this.view.prepend(this.canvas);
    this.renderer = new THREE.WebGLRenderer({ canvas: this.canvas, antialias: true, preserveDrawingBuffer: true });
    this.renderer.setPixelRatio(window.devicePixelRatio || 1);
    this.scene = new THREE.Scene();
    this.scene.background = new THREE.Color(0x111111);
    this.scene.add(new THREE.HemisphereLight(0xffffff, 0x303030, 1.6));
    // Output camera: OpenCV camera frame = world frame (x right, y down, looking down +z).
    this.outCamera = new THREE.PerspectiveCamera();
    this.outCamera.rotation.set(Math.PI, 0, 0);
    this.outCamera.updateMatrixWorld(true);
    this.orbitCamera = new THREE.PerspectiveCamera(40, 1, NEAR, FAR);
    this.orbitCamera.up.set(0, -1, 0);
    this.headLight = new THREE.DirectionalLight(0xffffff, 1.8);
    this.scene.add(this.headLight);
    this.controls = new OrbitControls(this.orbitCamera, this.canvas);
    this.controls.enableDamping = false;
    this.controls.addEventListener("change", () => this.render());
    this.handGroup = new THREE.Group();
    this.scene.add(this.handGroup);
    this.markerGroup = new THREE.Group();
    this.scene.add(this.markerGroup);
    this.frustum = null;
    this.raycaster = new THREE.Raycaster();
    // Capture phase: runs before OrbitControls' own listener, so a drag on a finger bends it
    // instead of orbiting.
    this.canvas.addEventListener("pointerdown", (e) => this.onPointerDown(e), { capture: true });
    this.canvas.addEventListener("pointermove", (e) => this.onPointerMove(e));
    this.canvas.addEventListener("pointerup", (e) => this.onPointerUp(e));
    this.canvas.addEventListener("wheel", (e) => this.onWheel(e), { passive: false });
    this.resizeObserver = new ResizeObserver(() => this.resize());
    this.resizeObserver.observe(this.view);
  }

  dispose() {
    this.resizeObserver?.disconnect();
    this.controls?.dispose();
    this.renderer?.dispose();
  }

  // ----------------------------------------------------------------------------- state
  modelChoice() {
    // The hand model of the SesaHand Hand Model node that feeds the same Render Conditions
    // node as this editor, else the first one in the graph, else the open hand.
    const graph = this.node.graph ?? app.graph;
    const widgetsOf = (n) => Object.fromEntries((n.widgets ?? []).map((w) => [w.name, w.value]));
    const fromNode = (n) => n && n.type === "SesaHandHandModel"
      ? { model: widgetsOf(n).model ?? "anny (open)", mano_file: widgetsOf(n).mano_file ?? "none" } : null;
    for (const output of this.node.outputs ?? []) {
      for (const linkId of output.links ?? []) {
        const link = graph.links?.get?.(linkId) ?? graph.links?.[linkId];
        const target = link && graph.getNodeById(link.target_id);
        const slot = target?.inputs?.find((i) => i.name === "hand_model");
        const modelLink = slot?.link != null && (graph.links?.get?.(slot.link) ?? graph.links?.[slot.link]);
        const found = modelLink && fromNode(graph.getNodeById(modelLink.origin_id));
        if (found) return found;
      }
    }
    const any = (graph._nodes ?? []).find((n) => n.type === "SesaHandHandModel");
    return fromNode(any) ?? { model: "anny (open)", mano_file: "none" };
  }

  checkModel() {
    if (this.ready && this.state && this.modelKey && JSON.stringify(this.modelChoice()) !== this.modelKey) {
      this.resolve({ writeText: false });  // same pose JSON, another model's mesh
    }
  }

  /** Load the widget's pose JSON (workflow load, or a hand edit). Invalid: error, keep pose. */
  async loadText(text, { undoable = false, keepText = true } = {}) {
    if (!text || !text.trim()) {
      await this.setState(clone(this.info.default_state), { undoable, writeText: true });
      return true;
    }
    let parsed;
    try {
      parsed = await postJSON("/sesahand/editor/parse", { ...this.modelChoice(), pose_json: text });
    } catch (error) {
      this.showStatus(`Invalid pose JSON: ${error.message}\nThe editor keeps the last valid pose` +
        (this.state ? "; any edit in the editor restores its JSON." : "."), "error");
      this.textError = true;
      return false;
    }
    this.textError = false;
    // Clamped angles change the pose: the text is rewritten so that the node renders what the
    // editor shows. Otherwise the text stays as it was given (a loaded workflow is unchanged).
    const rewrite = !keepText || parsed.clamped.length > 0;
    await this.setState(parsed.state, { undoable, writeText: rewrite,
      notes: [...parsed.notes, ...parsed.clamped.map((c) => `clamped: ${c}`)] });
    if (!rewrite) this.lastPoseText = text;
    return true;
  }

  async setState(state, { undoable = true, writeText = true, notes = [] } = {}) {
    if (undoable && this.state) {
      this.undoStack.push(clone(this.state));
      if (this.undoStack.length > 200) this.undoStack.shift();
      this.redoStack = [];
    }
    this.state = clone(state);
    this.hand = Math.min(this.hand, this.state.hands.length - 1);
    this.buildPanel();
    return this.resolve({ writeText, notes });
  }

  /** Ask the server for the pose JSON and meshes of the current state (latest wins). */
  resolve({ writeText = true, notes = [] } = {}) {
    this.pending = { state: clone(this.state), writeText, notes };
    if (!this.inFlight) this.inFlight = this.flush();
    return this.inFlight;
  }

  async flush() {
    try {
      while (this.pending) {
        const { state, writeText, notes } = this.pending;
        this.pending = null;
        const choice = this.modelChoice();
        this.modelKey = JSON.stringify(choice);
        let result;
        try {
          result = await postJSON("/sesahand/editor/resolve", { ...choice, state });
        } catch (error) {
          this.showStatus(`The server refused the pose: ${error.message}`, "error");
          continue;
        }
        if (!this.pending) this.state = result.state;  // else newer local edits are on their way
        this.camera = result.camera;
        await this.showMeshes(choice, result.hands);
        const text = JSON.stringify(result.pose);
        if (writeText) {
          this.lastPoseText = text;
          this.writeWidget(text);
          this.textError = false;
        }
        this.updatePanel();
        const messages = [...notes, ...result.clamped.map((c) => `clamped: ${c}`)];
        this.showStatus(messages.join("\n"), messages.length ? "warn" : "");
      }
    } finally {
      this.inFlight = null;
    }
  }

  writeWidget(text) {
    this.writing = true;
    try {
      this.poseWidget.value = text;
    } finally {
      this.writing = false;
    }
    this.node.setDirtyCanvas?.(true, true);
    app.graph?.change?.();
  }

  edit(mutate) {
    const next = clone(this.state);
    mutate(next);
    return this.setState(next);
  }

  setHands(mode) {
    return this.edit((s) => {
      const { width: W, height: H } = s.camera;
      const first = s.hands[this.hand] ?? s.hands[0];
      if (mode === "both") {
        const right = s.hands.find((h) => h.side === "right") ?? { ...clone(first), side: "right" };
        const left = s.hands.find((h) => h.side === "left") ?? { ...clone(first), side: "left" };
        const size = 0.6 * Math.min(W / 2, H);
        right.box = { center: [W / 4, H / 2], size };
        left.box = { center: [(3 * W) / 4, H / 2], size };
        s.hands = [right, left];
      } else {
        const hand = { ...clone(first), side: mode };
        if (s.hands.length > 1) hand.box = { center: [W / 2, H / 2], size: 0.6 * Math.min(W, H) };
        s.hands = [hand];
        this.hand = 0;
      }
    });
  }

  applyPreset(name) {
    return this.edit((s) => { s.hands[this.hand].angles = clone(this.info.presets[name]); });
  }

  mirror() {
    return this.edit((s) => {
      const W = s.camera.width;
      const src = s.hands[this.hand];
      const mirrored = { ...clone(src), side: src.side === "right" ? "left" : "right",
        box: { center: [W - src.box.center[0], src.box.center[1]], size: src.box.size } };
      if (s.hands.length === 1) s.hands[0] = mirrored;
      else s.hands[1 - this.hand] = mirrored;  // copy the pose onto the other hand, mirrored
    });
  }

  reset() {
    return this.edit((s) => {
      const { width: W, height: H } = s.camera;
      const n = s.hands.length;
      s.hands.forEach((h, i) => {
        h.angles = clone(this.info.presets.open_palm);
        h.orient = [0, 0, 0];
        h.box = { center: [(W * (2 * i + 1)) / (2 * n), H / 2], size: 0.6 * Math.min(W / n, H) };
      });
    });
  }

  undo() {
    if (!this.undoStack.length) return;
    this.redoStack.push(clone(this.state));
    this.setState(this.undoStack.pop(), { undoable: false });
  }

  redo() {
    if (!this.redoStack.length) return;
    this.undoStack.push(clone(this.state));
    this.setState(this.redoStack.pop(), { undoable: false });
  }

  // ----------------------------------------------------------------------------- panel
  buildPanel() {
    const s = this.state;
    this.panel.replaceChildren();
    this.rows = new Map();
    for (const [k, b] of Object.entries(this.sideButtons)) {
      const mode = s.hands.length === 2 ? "both" : s.hands[0].side;
      b.classList.toggle("on", k === mode);
    }
    if (s.hands.length === 2) {
      const tabs = el("div", { class: "bar" });
      s.hands.forEach((h, i) => {
        const b = el("button", { class: i === this.hand ? "on" : "", onclick: () => { this.hand = i; this.buildPanel(); this.render(); } },
          `${i + 1}: ${h.side}`);
        tabs.append(b);
      });
      this.panel.append(tabs);
    }
    const hand = s.hands[this.hand];
    const slider = (key, label, value, lo, hi, step, onInput) => {
      const range = el("input", { type: "range", min: lo, max: hi, step, value });
      const number = el("input", { type: "number", min: lo, max: hi, step, value: (+value).toFixed(step < 1 ? 1 : 0) });
      let before = null;
      const set = (v, commit) => {
        if (!before) before = clone(this.state);
        onInput(v);
        number.value = (+v).toFixed(step < 1 ? 1 : 0);
        range.value = v;
        this.updateIndicators();
        if (commit) {
          this.undoStack.push(before);
          this.redoStack = [];
          before = null;
        }
        this.resolve();
      };
      range.addEventListener("input", () => set(+range.value, false));
      range.addEventListener("change", () => set(+range.value, true));
      number.addEventListener("change", () => set(+number.value, true));
      const row = el("div", { class: "row", title: `${label}: ${lo}..${hi}` }, el("span", {}, label), range, number);
      this.rows.set(key, { row, range, number, lo: +lo, hi: +hi });
      return row;
    };
    for (const finger of FINGERS) {
      const group = el("div", { class: "group" }, el("b", {}, finger));
      for (const joint of this.info.joints[finger]) {
        const [lo, hi] = this.info.limits[finger][joint];
        group.append(slider(`${finger}.${joint}`, joint, hand.angles[finger][joint], lo, hi, 0.5,
          (v) => { this.state.hands[this.hand].angles[finger][joint] = v; }));
      }
      this.panel.append(group);
    }
    const wrist = el("div", { class: "group" }, el("b", {}, "wrist"));
    ["yaw", "pitch", "roll"].forEach((name, k) => wrist.append(
      slider(`orient.${k}`, name, hand.orient[k], -180, 180, 1, (v) => { this.state.hands[this.hand].orient[k] = v; })));
    this.panel.append(wrist);
    const { width: W, height: H } = s.camera;
    const frame = el("div", { class: "group" }, el("b", {}, "framing (pixels)"));
    frame.append(
      slider("box.x", "box x", hand.box.center[0], 0, W, 1, (v) => { this.state.hands[this.hand].box.center[0] = v; }),
      slider("box.y", "box y", hand.box.center[1], 0, H, 1, (v) => { this.state.hands[this.hand].box.center[1] = v; }),
      slider("box.size", "size", hand.box.size, 8, 2 * Math.max(W, H), 1, (v) => { this.state.hands[this.hand].box.size = v; }));
    this.panel.append(frame);
    const cam = el("div", { class: "group" }, el("b", {}, "camera"));
    const [fovLo, fovHi] = this.info.fov_range;
    cam.append(
      slider("cam.width", "width", W, 64, 2048, 8, (v) => { this.state.camera.width = v; }),
      slider("cam.height", "height", H, 64, 2048, 8, (v) => { this.state.camera.height = v; }),
      slider("cam.fov", "fov", s.camera.fov, fovLo, fovHi, 0.5, (v) => { this.state.camera.fov = v; }));
    this.panel.append(cam);
    this.updateIndicators();
  }

  updatePanel() {
    // Reflect server-side clamping in the sliders without rebuilding them.
    const hand = this.state.hands[this.hand];
    if (!hand || !this.rows) return;
    for (const finger of FINGERS) {
      for (const joint of this.info.joints[finger]) {
        const r = this.rows.get(`${finger}.${joint}`);
        const v = hand.angles[finger][joint];
        if (r && document.activeElement !== r.range) { r.range.value = v; r.number.value = v.toFixed(1); }
      }
    }
    this.updateIndicators();
  }

  limitState(finger, joint, value) {
    const [lo, hi] = this.info.limits[finger][joint];
    // A limit at 0 degrees is the straight rest position (a flat finger), not a strain.
    const margin = 0.1 * (hi - lo);
    const atLo = lo !== 0 && value <= lo + 0.01;
    const atHi = hi !== 0 && value >= hi - 0.01;
    if (atLo || atHi) return "limit";
    if ((lo !== 0 && value < lo + margin) || (hi !== 0 && value > hi - margin)) return "near";
    return "ok";
  }

  updateIndicators() {
    const hand = this.state?.hands[this.hand];
    if (!hand || !this.rows) return;
    for (const finger of FINGERS) {
      for (const joint of this.info.joints[finger]) {
        const r = this.rows.get(`${finger}.${joint}`);
        const st = this.limitState(finger, joint, hand.angles[finger][joint]);
        r.row.classList.toggle("near", st === "near");
        r.row.classList.toggle("limit", st === "limit");
        const sel = this.joint && this.joint.finger === finger && [this.joint.flex, this.joint.side].includes(joint);
        r.row.classList.toggle("sel", !!sel);
      }
    }
    // The gauge of the selected joint.
    if (this.joint) {
      const parts = [this.joint.flex, this.joint.side].filter(Boolean).map((joint) => {
        const [lo, hi] = this.info.limits[this.joint.finger][joint];
        const v = hand.angles[this.joint.finger][joint];
        const st = this.limitState(this.joint.finger, joint, v);
        const color = { ok: "#6a6", near: "#e90", limit: "#e33" }[st];
        const pct = (100 * (v - lo)) / (hi - lo);
        return `<div>${joint} <b style="color:${color}">${v.toFixed(1)}&deg;</b> (limits ${lo}&deg; .. ${hi}&deg;)` +
          `<div class="track"><div class="fill" style="left:calc(${pct}% - 2px);background:${color}"></div></div></div>`;
      });
      this.gauge.innerHTML = `<b>${this.joint.label}</b> (hand ${this.hand + 1}, ${hand.side})` + parts.join("");
      this.gauge.style.display = "block";
    } else {
      this.gauge.style.display = "none";
    }
    this.updateMarkers();
  }

  showStatus(text, kind = "") {
    this.status.textContent = text;
    this.status.className = `status ${kind}`;
  }

  // ----------------------------------------------------------------------------- 3D
  async facesFor(choice, side) {
    const key = `${choice.model}|${choice.mano_file}|${side}`;
    if (!this.faces.has(key)) {
      const q = new URLSearchParams({ ...choice, side });
      const body = await getJSON(`/sesahand/editor/mesh?${q}`);
      this.faces.set(key, decode(body.faces, Int32Array));
    }
    return this.faces.get(key);
  }

  async showMeshes(choice, hands) {
    const THREE = this.THREE;
    const faces = await Promise.all(hands.map((h) => this.facesFor(choice, h.side)));
    for (const child of [...this.handGroup.children]) {
      child.geometry.dispose();
      this.handGroup.remove(child);
    }
    this.meshes = hands.map((h, i) => {
      const vertices = decode(h.vertices, Float32Array);
      const geometry = new THREE.BufferGeometry();
      geometry.setAttribute("position", new THREE.BufferAttribute(vertices, 3));
      geometry.setIndex(new THREE.BufferAttribute(new Uint32Array(faces[i]), 1));
      geometry.computeVertexNormals();
      geometry.computeBoundingSphere();
      const material = new THREE.MeshStandardMaterial({ color: HAND_COLORS[h.side], roughness: 0.8, side: THREE.DoubleSide });
      const mesh = new THREE.Mesh(geometry, material);
      mesh.userData.hand = i;
      this.handGroup.add(mesh);
      return { side: h.side, vertices, joints: h.joints, mesh };
    });
    this.updateOutCamera();
    if (!this.framedOnce) { this.frame(); this.framedOnce = true; }
    this.updateMarkers();
    this.render();
  }

  updateOutCamera() {
    const THREE = this.THREE;
    const { K, width: W, height: H } = this.camera;
    const [fx, s, cx] = K[0];
    const [, fy, cy] = K[1];
    // OpenCV K -> three.js clip space for a camera looking down +z with y down (see
    // sesahand/render/projection.py gl_projection; here the camera's local axes are x, -y, -z).
    const P = new THREE.Matrix4().set(
      (2 * fx) / W, (-2 * s) / W, 1 - (2 * cx) / W, 0,
      0, (2 * fy) / H, (2 * cy) / H - 1, 0,
      0, 0, -(FAR + NEAR) / (FAR - NEAR), (-2 * FAR * NEAR) / (FAR - NEAR),
      0, 0, -1, 0);
    this.outCamera.projectionMatrix.copy(P);
    this.outCamera.projectionMatrixInverse.copy(P).invert();
    if (this.frustum) { this.scene.remove(this.frustum); this.frustum.dispose(); }
    // The image frame at the hands' depth, drawn in the orbit view.
    const depth = this.handCentre().z || 0.5;
    const corners = [[0, 0], [W, 0], [W, H], [0, H], [0, 0]].map(([u, v]) =>
      new THREE.Vector3(((u - cx) / fx) * depth, ((v - cy) / fy) * depth, depth));
    const apex = new THREE.Vector3(0, 0, 0);
    const points = [...corners, ...corners.slice(1, 4).flatMap((c) => [apex, c])];
    this.frustum = new THREE.Line(new THREE.BufferGeometry().setFromPoints(points),
      new THREE.LineBasicMaterial({ color: 0x888888 }));
    this.frustum.visible = !this.cameraView;
    this.scene.add(this.frustum);
  }

  handCentre() {
    const THREE = this.THREE;
    const box = new THREE.Box3();
    for (const m of this.meshes) box.expandByObject(m.mesh);
    return box.isEmpty() ? new THREE.Vector3(0, 0, 0.5) : box.getCenter(new THREE.Vector3());
  }

  frame() {
    if (!this.meshes.length) return;
    const THREE = this.THREE;
    const box = new THREE.Box3();
    for (const m of this.meshes) box.expandByObject(m.mesh);
    const centre = box.getCenter(new THREE.Vector3());
    const radius = box.getSize(new THREE.Vector3()).length() / 2;
    const direction = centre.clone().normalize(); // from the output camera towards the hands
    const distance = radius / Math.sin(THREE.MathUtils.degToRad(this.orbitCamera.fov / 2)) * 1.1;
    this.orbitCamera.position.copy(centre).addScaledVector(direction, -distance);
    this.controls.target.copy(centre);
    this.controls.update();
    this.render();
  }

  updateMarkers() {
    if (!this.THREE || !this.markerGroup) return;
    const THREE = this.THREE;
    for (const child of [...this.markerGroup.children]) this.markerGroup.remove(child);
    const hand = this.state?.hands[this.hand];
    const mesh = this.meshes[this.hand];
    if (!hand || !mesh || mesh.side !== hand.side) { this.render(); return; }
    const colors = { ok: 0x55cc55, near: 0xee9900, limit: 0xee3333 };
    const palm = new THREE.Vector3().fromArray(mesh.joints[5]).distanceTo(new THREE.Vector3().fromArray(mesh.joints[17]));
    const scale = 0.09 * palm;
    for (const j of JOINT_TABLE) {
      const states = [j.flex, j.side].filter(Boolean).map((a) => this.limitState(j.finger, a, hand.angles[j.finger][a]));
      const st = states.includes("limit") ? "limit" : states.includes("near") ? "near" : "ok";
      const selected = this.joint && this.joint.op === j.op;
      const sphere = new THREE.Mesh(new THREE.SphereGeometry(selected ? scale * 1.5 : scale, 12, 8),
        new THREE.MeshBasicMaterial({ color: selected ? 0xffffff : colors[st], depthTest: false }));
      sphere.renderOrder = 10;
      sphere.position.fromArray(mesh.joints[j.op]);
      sphere.userData.joint = j;
      this.markerGroup.add(sphere);
    }
    this.markerGroup.visible = !this.cameraView;
    this.render();
  }

  resize() {
    if (!this.renderer) return;
    const { clientWidth: w, clientHeight: h } = this.view;
    if (w < 2 || h < 2) return;
    this.renderer.setSize(w, h, false);
    this.orbitCamera.aspect = w / h;
    this.orbitCamera.updateProjectionMatrix();
    this.render();
  }

  /** The output image's rectangle inside the view (letterboxed), in CSS pixels. */
  imageRect() {
    const { clientWidth: w, clientHeight: h } = this.view;
    const { width: W, height: H } = this.camera;
    const s = Math.min(w / W, h / H);
    return { x: (w - W * s) / 2, y: (h - H * s) / 2, w: W * s, h: H * s, scale: s };
  }

  render() {
    if (!this.renderer || this.rendering) return;
    this.rendering = true;
    requestAnimationFrame(() => {
      this.rendering = false;
      const r = this.renderer;
      const { clientWidth: w, clientHeight: h } = this.view;
      r.setScissorTest(false);
      r.setViewport(0, 0, w, h);
      r.setClearColor(0x111111);
      r.clear();
      if (this.cameraView && this.camera) {
        const rect = this.imageRect();
        r.setScissorTest(true);
        r.setViewport(rect.x, h - rect.y - rect.h, rect.w, rect.h);
        r.setScissor(rect.x, h - rect.y - rect.h, rect.w, rect.h);
        this.headLight.position.set(0, 0, 0);
        this.headLight.target.position.set(0, 0, 1);
        this.headLight.target.updateMatrixWorld();
        this.scene.background = new this.THREE.Color(0x000000);
        r.render(this.scene, this.outCamera);
        this.scene.background = new this.THREE.Color(0x111111);
        r.setScissorTest(false);
        this.drawBoxes(rect);
      } else {
        this.clearBoxes();
        this.headLight.position.copy(this.orbitCamera.position);
        this.headLight.target.position.copy(this.controls.target);
        this.headLight.target.updateMatrixWorld();
        r.render(this.scene, this.orbitCamera);
      }
    });
  }

  drawBoxes(rect) {
    this.clearBoxes();
    this.boxEls = this.state.hands.map((hand, i) => {
      const { center: [cx, cy], size } = hand.box;
      const box = el("div", { style: `position:absolute;pointer-events:none;border:1px dashed ${i === this.hand ? "#fff" : "#888"};` +
        `left:${rect.x + (cx - size / 2) * rect.scale}px;top:${rect.y + (cy - size / 2) * rect.scale}px;` +
        `width:${size * rect.scale}px;height:${size * rect.scale}px` });
      this.view.append(box);
      return box;
    });
  }

  clearBoxes() {
    for (const b of this.boxEls ?? []) b.remove();
    this.boxEls = [];
  }

  toggleCameraView() {
    this.cameraView = !this.cameraView;
    this.camButton.classList.toggle("on", this.cameraView);
    this.controls.enabled = !this.cameraView;
    if (this.frustum) this.frustum.visible = !this.cameraView;
    this.markerGroup.visible = !this.cameraView;
    this.hint.textContent = this.cameraView ? `camera view ${this.camera?.width}x${this.camera?.height}: drag to move the hand, wheel to resize` : "";
    this.render();
  }

  toggleHelp(show) {
    const visible = show ?? this.help.style.display !== "block";
    this.help.style.display = visible ? "block" : "none";
  }

  // ----------------------------------------------------------------------------- picking
  pointerNDC(e) {
    const bounds = this.canvas.getBoundingClientRect();
    return new this.THREE.Vector2(((e.clientX - bounds.left) / bounds.width) * 2 - 1,
      -((e.clientY - bounds.top) / bounds.height) * 2 + 1);
  }

  /** The joint (JOINT_TABLE entry) and hand under the pointer in the orbit view, or null. */
  pick(e) {
    const THREE = this.THREE;
    this.raycaster.setFromCamera(this.pointerNDC(e), this.orbitCamera);
    const markers = this.raycaster.intersectObjects(this.markerGroup.children, false);
    if (markers.length) return { hand: this.hand, joint: markers[0].object.userData.joint };
    const hits = this.raycaster.intersectObjects(this.handGroup.children, false);
    if (!hits.length) return null;
    const hit = hits[0];
    const handIndex = hit.object.userData.hand;
    const joints = this.meshes[handIndex].joints.map((p) => new THREE.Vector3().fromArray(p));
    let best = null;
    for (const j of JOINT_TABLE) {
      const seg = new THREE.Line3(joints[j.op], joints[j.next]);
      const d = seg.closestPointToPoint(hit.point, true, new THREE.Vector3()).distanceTo(hit.point);
      if (!best || d < best.d) best = { d, joint: j };
    }
    // Hits on the palm (far from every finger bone) orbit instead.
    const palmWidth = joints[5].distanceTo(joints[17]);
    return best && best.d < 0.35 * palmWidth ? { hand: handIndex, joint: best.joint } : null;
  }

  focus() {
    this.keys.focus({ preventScroll: true });
  }

  onPointerDown(e) {
    this.focus();
    if (!this.state || !this.meshes.length) return;
    if (this.cameraView) {
      if (e.button !== 0) return;
      this.drag = { kind: "box", x: e.clientX, y: e.clientY, before: clone(this.state), moved: false };
      this.canvas.setPointerCapture(e.pointerId);
      return;
    }
    if (e.button !== 0) return;
    const picked = this.pick(e);
    if (!picked) return;  // OrbitControls orbits
    e.stopImmediatePropagation();
    this.controls.enabled = false;
    if (picked.hand !== this.hand) { this.hand = picked.hand; this.buildPanel(); }
    this.joint = picked.joint;
    this.updateIndicators();
    this.drag = { kind: "joint", x: e.clientX, y: e.clientY, before: clone(this.state), moved: false };
    this.canvas.setPointerCapture(e.pointerId);
  }

  onPointerMove(e) {
    const drag = this.drag;
    if (!drag) return;
    const dx = e.clientX - drag.x;
    const dy = e.clientY - drag.y;
    if (!dx && !dy) return;
    drag.x = e.clientX;
    drag.y = e.clientY;
    drag.moved = true;
    const hand = this.state.hands[this.hand];
    if (drag.kind === "box") {
      const s = this.imageRect().scale;
      hand.box.center = [hand.box.center[0] + dx / s, hand.box.center[1] + dy / s];
    } else {
      const j = this.joint;
      const bend = (name, delta) => {
        const [lo, hi] = this.info.limits[j.finger][name];
        hand.angles[j.finger][name] = Math.min(hi, Math.max(lo, hand.angles[j.finger][name] + delta));
      };
      if (e.shiftKey && j.side) bend(j.side, dx * 0.4);
      else bend(j.flex, dy * 0.5);
    }
    this.updatePanel();
    this.resolve();
  }

  onPointerUp(e) {
    const drag = this.drag;
    if (!drag) return;
    this.drag = null;
    this.canvas.releasePointerCapture?.(e.pointerId);
    this.controls.enabled = !this.cameraView;
    if (drag.moved) {
      this.undoStack.push(drag.before);
      this.redoStack = [];
      if (drag.kind === "box") this.buildPanel();
    }
  }

  onWheel(e) {
    if (!this.cameraView || !this.state) return;  // the orbit view zooms (OrbitControls)
    e.preventDefault();
    const before = clone(this.state);
    const hand = this.state.hands[this.hand];
    hand.box.size = Math.max(8, hand.box.size * Math.exp(-e.deltaY * 0.001));
    this.undoStack.push(before);
    this.redoStack = [];
    this.buildPanel();
    this.resolve();
  }

  // ----------------------------------------------------------------------------- keys
  onKey(e) {
    const key = e.key;
    const ctrl = e.ctrlKey || e.metaKey;
    if (e.target !== this.keys && (e.target.tagName === "INPUT" || e.target.tagName === "SELECT")) {
      // Typing a number or moving a slider with the arrows stays there and triggers no
      // ComfyUI shortcut; Ctrl+Z / Ctrl+Y on a slider still undo / redo the editor.
      const slider = e.target.type === "range";
      e.stopPropagation();
      if (!(slider && ctrl && "zy".includes(key.toLowerCase()))) return;
    }
    let handled = true;
    if (ctrl && key.toLowerCase() === "z" && !e.shiftKey) this.undo();
    else if (ctrl && (key.toLowerCase() === "y" || (key.toLowerCase() === "z" && e.shiftKey))) this.redo();
    else if (ctrl) handled = false;
    else if (key === "h" || key === "H" || key === "?") this.toggleHelp();
    else if (key === "Escape") { this.toggleHelp(false); this.joint = null; this.updateIndicators(); }
    else if (key === "c" || key === "C" || e.code === "Numpad0") this.toggleCameraView();
    else if (key === "f" || key === "F") this.frame();
    else if (key === "m" || key === "M") this.mirror();
    else if (key === "r" || key === "R") this.reset();
    else if (key === "1" || key === "2") {
      const i = +key - 1;
      if (i < this.state.hands.length) { this.hand = i; this.buildPanel(); }
    } else if (key === "Tab") {
      const k = this.joint ? JOINT_TABLE.indexOf(this.joint) : -1;
      this.joint = JOINT_TABLE[(k + (e.shiftKey ? -1 : 1) + JOINT_TABLE.length) % JOINT_TABLE.length];
      this.updateIndicators();
    } else if (key.startsWith("Arrow") && this.joint) {
      const step = e.shiftKey ? 5 : 1;
      const j = this.joint;
      const name = key === "ArrowUp" || key === "ArrowDown" ? j.flex : j.side;
      if (name) {
        const delta = key === "ArrowUp" || key === "ArrowRight" ? step : -step;
        const [lo, hi] = this.info.limits[j.finger][name];
        this.edit((s) => {
          const a = s.hands[this.hand].angles[j.finger];
          a[name] = Math.min(hi, Math.max(lo, a[name] + delta));
        });
      }
    } else handled = false;
    if (handled) {
      e.preventDefault();
    }
    e.stopPropagation();  // keys typed in the editor are the editor's, not ComfyUI's shortcuts
  }

  // ----------------------------------------------------------------------------- test hooks
  /** Client (page) coordinates of OpenPose joint `op` of hand `hand` in the orbit view. */
  jointClientPosition(hand, op) {
    const p = new this.THREE.Vector3().fromArray(this.meshes[hand].joints[op]).project(this.orbitCamera);
    const b = this.canvas.getBoundingClientRect();
    return { x: b.left + ((p.x + 1) / 2) * b.width, y: b.top + ((1 - p.y) / 2) * b.height };
  }

  /** The hands' silhouette through the output camera at the output size: what the editor
   * projects, for comparison with the server's rendered mask. Rows from the top. */
  projectMask() {
    const THREE = this.THREE;
    const { width: W, height: H } = this.camera;
    const target = new THREE.WebGLRenderTarget(W, H);
    const white = new THREE.MeshBasicMaterial({ color: 0xffffff, side: THREE.DoubleSide });
    const scene = new THREE.Scene();
    scene.background = new THREE.Color(0x000000);
    for (const m of this.meshes) scene.add(new THREE.Mesh(m.mesh.geometry, white));
    const r = this.renderer;
    r.setRenderTarget(target);
    r.setViewport(0, 0, W, H);
    r.render(scene, this.outCamera);
    const pixels = new Uint8Array(W * H * 4);
    r.readRenderTargetPixels(target, 0, 0, W, H, pixels);
    r.setRenderTarget(null);
    target.dispose();
    white.dispose();
    const rows = [];
    for (let y = 0; y < H; y++) {
      const src = (H - 1 - y) * W * 4;  // GL rows start at the bottom
      let row = "";
      for (let x = 0; x < W; x++) row += pixels[src + 4 * x] > 127 ? "1" : "0";
      rows.push(row);
    }
    this.render();
    return { width: W, height: H, rows };
  }
}

app.registerExtension({
  name: "SesaHand.HandPoseEditor",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_TYPE) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      const poseWidget = this.widgets.find((w) => w.name === "pose_json");
      const editor = new HandPoseEditor(this, poseWidget);
      this.sesahandEditor = editor;
      const widget = this.addDOMWidget("hand_editor", "sesahand_hand_editor", editor.root, {
        serialize: false,
        hideOnZoom: false,
        getMinHeight: () => 460,
        getHeight: () => 520,
      });
      widget.serialize = false;  // nothing of the editor itself goes into the workflow or prompt
      // The editor stays after pose_json: litegraph serialises widget values by widget index
      // but restores them by index among serialisable widgets, so a non-serialised widget in
      // front of pose_json would shift its saved value.
      if (poseWidget.element) poseWidget.element.style.fontSize = "10px";
      // Hand edits of the JSON (the text box calls back on every keystroke): checked once the
      // typing pauses.
      const callback = poseWidget.callback;
      let timer = null;
      poseWidget.callback = function (value) {
        callback?.apply(this, arguments);
        if (editor.writing || !editor.ready) return;
        clearTimeout(timer);
        timer = setTimeout(() => {
          if (poseWidget.value !== editor.lastPoseText) editor.loadText(poseWidget.value, { undoable: true });
        }, 400);
      };
      this.setSize([Math.max(this.size[0], 760), Math.max(this.size[1], 760)]);
      // Resolves to whether the editor could start (the error is shown in the node).
      editor.started = editor.init().then(() => true, () => false);
      editor.started.then((ok) => {
        // A workflow being loaded sets the widget after this; onConfigure loads it then.
        if (ok && !editor.configured) editor.loadText(poseWidget.value);
      });
      return result;
    };
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const result = onConfigure?.apply(this, arguments);
      const editor = this.sesahandEditor;
      if (editor) {
        editor.configured = true;
        editor.started.then((ok) => ok && editor.loadText(this.widgets.find((w) => w.name === "pose_json").value));
      }
      return result;
    };
    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      this.sesahandEditor?.dispose();
      return onRemoved?.apply(this, arguments);
    };
  },
});
