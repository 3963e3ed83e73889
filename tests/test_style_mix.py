"""Style mixes ``a+b`` through the real entry points: the built-in style bank (CLI `--style a+b`) and the
websocket protocol's ``set_style``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.config import load_config
from engine.runtime import build_decoder, build_styles
from streaming import protocol as P

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_builtin_bank_mixes_styles() -> None:
    config = load_config(None, {})
    bank = build_styles(config, build_decoder(config))
    assert "happy+sad" in bank and "happy+nosuch" not in bank
    np.testing.assert_allclose(bank.get("happy+sad"), (bank.get("happy") + bank.get("sad")) / 2, rtol=1e-6)
    half = bank.intensity("happy+sad", 0.5)
    np.testing.assert_allclose(half, (bank.get("neutral") + bank.get("happy+sad")) / 2, rtol=1e-5, atol=1e-6)


def test_protocol_accepts_a_mix_name() -> None:
    raw = json.dumps({"v": 1, "id": 1, "type": "set_style", "name": "happy+sad"})
    req = P.parse_message(raw, P.Limits(max_message_bytes=4096, max_upload_bytes=2048))
    assert req.name == "happy+sad"
