"""The paper's ablation as configs: every row loads, and the rows differ only where the paper's
rows differ (behaviour-semantics prompts, SF, AE, alpha)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sesahand.train.config import load_config

ABLATION = Path(__file__).resolve().parents[2] / "configs" / "ablation"
#: row -> (caption_field, w, alpha); se_sf_ae is also the alpha sweep's 2.0
ROWS = {"baseline": ("caption", 0.0, 0.0), "se": ("prompt", 0.0, 0.0), "se_sf": ("prompt", 1.0, 0.0),
        "se_sf_ae": ("prompt", 1.0, 2.0), "alpha_1.0": ("prompt", 1.0, 1.0), "alpha_2.5": ("prompt", 1.0, 2.5)}


def leaves(value, path=""):
    """{dotted path: leaf value} of a nested dict/list."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in leaves(item, f"{path}.{key}" if path else key).items()}
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return {k: v for i, item in enumerate(value) for k, v in leaves(item, f"{path}[{i}]").items()}
    return {path: value}


def test_the_folder_holds_exactly_the_rows():
    assert sorted(p.stem for p in ABLATION.glob("*.yaml")) == sorted(ROWS)


@pytest.mark.parametrize("row", sorted(ROWS))
def test_rows_differ_only_where_the_paper_s_rows_differ(row):
    reference = leaves(load_config(ABLATION / "se_sf_ae.yaml").to_dict())
    config = load_config(ABLATION / f"{row}.yaml")
    field, w, alpha = ROWS[row]
    assert (config.data.sources[0].caption_field, config.model.w, config.model.alpha) == (field, w, alpha)
    assert Path(config.output_dir).name == row
    differing = {k for k, v in leaves(config.to_dict()).items() if reference[k] != v}
    allowed = {"output_dir", "data.sources[0].caption_field", "model.w", "model.alpha"}
    assert differing <= allowed, differing - allowed
    # and what the paper's table says the row has
    assert config.model.fusion == "tokens" and config.data.caption_dropout == 0.0
