"""engine.config: defaults, TOML, --set overrides, dedicated flags, clear errors."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

import pytest

from engine.config import Config, ConfigError, add_config_arguments, config_from_args, load_config


def test_defaults_are_valid() -> None:
    cfg = load_config()
    assert cfg == Config().validate()
    assert cfg.fps == 30 and cfg.audio.sample_rate == 16000
    assert 0 <= cfg.decoder.lookahead <= 5


def test_toml_then_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[decoder]\nlookahead = 1\naccelerator = "compile"\n[renderer]\nwindow_lookahead = 4\n'
                 '[server]\ntoken = "abc"\n')
    cfg = load_config(str(f), {"decoder.lookahead": "4", "style.intensity": "0.5", "server.token": "none"})
    assert cfg.decoder.lookahead == 4  # override beats the file
    assert cfg.decoder.accelerator == "compile"
    assert cfg.renderer.window_lookahead == 4
    assert cfg.style.intensity == 0.5
    assert cfg.server.token is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"decoder.lookahed": "2"}, "unknown key 'decoder.lookahed'"),
        ({"nosection.x": "1"}, "unknown key"),
        ({"decoder.lookahead": "two"}, "expected int"),
        ({"decoder.lookahead": "9"}, "0..5"),
        ({"renderer.window_lookahead": "14"}, "0..13"),
        ({"decoder.accelerator": "magic"}, "not one of"),
        ({"decoder": "1"}, "is a section"),
        ({"recognizer.backend": "labels"}, "needs a file"),
        ({"recognizer.lookahead_ms": "95"}, "multiple of 10"),
        ({"recognizer.lookahead_ms": "-10"}, "multiple of 10"),
        ({"server.public_url": "node7:8080"}, "server.public_url"),
        ({"server.public_url": "http://node7:8080/?x=1"}, "without a query"),
        ({"server.playout_delay_ms": "0"}, "server.playout_delay_ms"),
        ({"server.playout_delay_ms": "200,100"}, "server.playout_delay_ms"),
        ({"server.mic_prefetch_packets": "16"}, "0..15"),
    ],
)
def test_errors_name_the_key(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_bad_toml_file(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[decoder\n")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config(str(f))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.toml"))
    f.write_text("[decoder]\nlookahead = 2.5\n")
    with pytest.raises(ConfigError, match="expected int"):
        load_config(str(f))


def test_command_line_precedence(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[decoder]\nlookahead = 1\nthreads = 2\n")
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["--config", str(f), "--set", "decoder.lookahead=3", "--set", "style.default=happy",
                              "--lookahead", "5", "--renderer", "pirenderer", "--workers", "0"])
    cfg = config_from_args(args)
    assert cfg.decoder.lookahead == 5  # dedicated flag > --set > file
    assert cfg.decoder.workers == 0
    assert cfg.decoder.threads == 2
    assert cfg.style.default == "happy"
    assert cfg.renderer.kind == "pirenderer"
    with pytest.raises(ConfigError, match="SECTION.KEY=VALUE"):
        config_from_args(parser.parse_args(["--set", "decoder.lookahead"]))


def test_recognizer_lookahead_reaches_the_allphone_recognizer() -> None:
    """The latency knob of the default recognizer: the flag sets the config, the runtime builds with it, and
    the recognizer's declared lag (which sets the session's output delay) moves by the same amount."""
    from engine.recognizer.process import ProcessRecognizer
    from engine.runtime import EngineRuntime

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    lags = {}
    for ms in (60, 120):
        cfg = config_from_args(parser.parse_args(["--recognizer-lookahead", str(ms)]))
        assert cfg.recognizer.lookahead_ms == ms
        rt = EngineRuntime.__new__(EngineRuntime)  # only make_recognizer is exercised: no models loaded
        rt.config, rt._recognizer_factory, rt._warm, rt._warm_lock = cfg, None, None, threading.Lock()
        rec = rt.make_recognizer()
        assert isinstance(rec, ProcessRecognizer)  # recognizer.isolate (default): the option reached the child
        lags[ms] = rec.lag
        rec.close()
        assert rt._warm is not None
        rt._warm.close()
    assert lags[120] - lags[60] == pytest.approx(0.06, abs=1e-6)
