"""Shared fixtures of the library tier."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def anny_model():
    """The open hand model, from the shared SesaHand cache (built once, 1-3 minutes, if absent)."""
    from sesahand.hands import load_hand_model

    return load_hand_model("anny")
