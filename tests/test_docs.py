"""The repository stands alone: no file points outside it (the method lives in
docs/method.md), the method page carries every equation, and relative links in the docs
resolve."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [ROOT / name for name in out.decode().split("\0") if name]


def test_no_file_points_outside_the_repository():
    pattern = re.compile(r"\.\./shared|shared/docs|METHOD\.md")
    offenders = []
    for path in tracked_files():
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        offenders += [f"{path.relative_to(ROOT)}:{n}" for n, line in
                      enumerate(text.splitlines(), 1) if pattern.search(line)]
    offenders = [o for o in offenders if not o.startswith("tests/test_docs.py")]
    assert not offenders, f"point these at docs/method.md instead: {offenders}"


def test_method_page_has_every_equation_and_the_sf_section():
    text = (ROOT / "docs" / "method.md").read_text(encoding="utf-8")
    for tag in ("(eq. L)", "(eq. SF-1)", "(eq. SF-2)", "(eq. SF-3)", "(eq. AE-1)"):
        assert tag in text, tag
    sf = text.split("\n### Structural fusion choices\n", 1)[1].split("\n## ", 1)[0]
    for choice in ("Balanced hierarchy", "Float32 maps", "Memory", "Chunk size per device", "Train / infer parity"):
        assert choice in sf, choice
    assert "changing in issue" not in text.lower(), "the method page describes today's code"


def test_relative_links_in_the_docs_resolve():
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken
