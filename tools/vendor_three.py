"""Refresh the vendored three.js (``web_vendor/three/``) from the npm registry, reproducibly.

The hand-pose editor (``js/hand_pose_editor.js``) imports three.js from files the pack serves
itself (route ``/sesahand/vendor/three/<file>``, see ``nodes/editor.py``): no CDN at run time.
They live outside ``js/`` because ComfyUI loads every ``.js`` under ``WEB_DIRECTORY`` as a
frontend extension.

What it does: ``npm pack three@VERSION`` (the npm client, from the registry), checks the
tarball against the pinned sha512 integrity, extracts the ES module build
(``build/three.module.js`` and ``build/three.core.js``), ``OrbitControls.js`` (its bare
``'three'`` import rewritten to the vendored file) and the licence, and writes
``VERSION``. Running it twice gives byte-identical files.

Usage: ``python tools/vendor_three.py`` (needs ``npm`` and access to the npm registry).
To move to another release, change VERSION and INTEGRITY (``npm view three@X dist.integrity``).
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.187.0"
INTEGRITY = "sha512-Qiu7R+Cmh8CstZsY1uJOSWnVlfo7ZtNLV7mF8Jltk3LB3AtDu9cRZlcnRKkAk8Y4z6KKw35z7Y7Urd7jWY8etA=="
DEST = Path(__file__).resolve().parents[1] / "web_vendor" / "three"
#: tarball member -> vendored file name
FILES = {
    "package/build/three.module.js": "three.module.js",
    "package/build/three.core.js": "three.core.js",
    "package/examples/jsm/controls/OrbitControls.js": "OrbitControls.js",
    "package/LICENSE": "LICENSE",
}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", f"three@{VERSION}", "--pack-destination", tmp, "--silent"],
                       check=True, stdout=subprocess.DEVNULL)
        tarball = Path(tmp) / f"three-{VERSION}.tgz"
        digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
        if digest != INTEGRITY:
            print(f"three@{VERSION}: integrity {digest} does not match the pinned {INTEGRITY}",
                  file=sys.stderr)
            return 1
        staged = Path(tmp) / "three"
        staged.mkdir()
        with tarfile.open(tarball) as tar:
            for member, name in FILES.items():
                data = tar.extractfile(member).read()
                if name == "OrbitControls.js":
                    data = data.replace(b"from 'three';", b"from './three.module.js';")
                    if b"from 'three'" in data:
                        print("OrbitControls.js: an import of 'three' was not rewritten", file=sys.stderr)
                        return 1
                (staged / name).write_bytes(data)
        (staged / "VERSION").write_text(f"three {VERSION} ({INTEGRITY})\n")
        if DEST.exists():
            shutil.rmtree(DEST)
        DEST.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staged, DEST)
    print(f"vendored three {VERSION} into {DEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
