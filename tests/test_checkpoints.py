"""Own checkpoint format (config + weights, weights_only loading, fp16 storage) and strict-load helpers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from models.checkpoints import (
    CheckpointError,
    load_checkpoint,
    load_official_state_dict,
    load_state_dict_strict,
    save_checkpoint,
    split_prefixed,
)
from models.styletalk import StyleTalk, StyleTalkConfig

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TINY = StyleTalkConfig(
    d_model=16, nhead=2, dim_feedforward=24, ph_embed_dim=8, num_content_layers=1, num_style_layers=1
)


@dataclass
class _NotPlain:
    x: int = 1


def _tiny_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    windows = torch.randint(0, 41, (2, 4, 11), generator=g)
    clip = torch.randn(2, 256, 64, generator=g)
    mask = torch.zeros(2, 256, dtype=torch.bool)
    mask[1, 100:] = True
    clip[1, 100:] = 0
    return windows, clip, mask


def test_round_trip_float32_is_exact(tmp_path: Path) -> None:
    state = {
        "a.weight": torch.randn(3, 4),
        "a.idx": torch.arange(5),
        "b": torch.randn(2, dtype=torch.float64),
    }
    config = {"d": 4, "names": ["x", "y"], "nested": {"flag": True, "none": None}}
    path = tmp_path / "sub" / "c.pt"
    save_checkpoint(path, "toy", config, state, extra={"step": 7})
    ckpt = load_checkpoint(path)
    assert ckpt.kind == "toy" and ckpt.config == config and ckpt.extra == {"step": 7}
    assert list(ckpt.state_dict) == list(state)
    for k, v in state.items():
        assert ckpt.state_dict[k].dtype == v.dtype and torch.equal(ckpt.state_dict[k], v)
    raw = torch.load(path, weights_only=True)  # plain containers only: safe loader reads it directly
    assert raw["format"] == "styletalk-live" and raw["config"] == config
    assert [p.name for p in path.parent.iterdir()] == ["c.pt"]  # no temp files left behind


def test_half_storage_restores_float32(tmp_path: Path) -> None:
    w = torch.randn(256, 256)
    big = torch.tensor([1e6, 1.0])  # beyond float16 range: must stay float32, not become inf
    state = {"w": w, "big": big, "ids": torch.arange(4), "d": torch.randn(3, dtype=torch.float64)}
    save_checkpoint(tmp_path / "full.pt", "toy", {}, state)
    save_checkpoint(tmp_path / "half.pt", "toy", {}, state, half=True)
    raw = torch.load(tmp_path / "half.pt", weights_only=True)
    assert raw["state_dict"]["w"].dtype == torch.float16
    assert raw["state_dict"]["big"].dtype == torch.float32
    assert raw["state_dict"]["d"].dtype == torch.float64 and raw["state_dict"]["ids"].dtype == torch.int64
    assert (tmp_path / "half.pt").stat().st_size < 0.6 * (tmp_path / "full.pt").stat().st_size
    got = load_checkpoint(tmp_path / "half.pt").state_dict
    assert got["w"].dtype == torch.float32
    assert torch.equal(got["w"], w.half().float())
    assert torch.equal(got["big"], big) and torch.equal(got["d"], state["d"])


def test_styletalk_save_and_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = StyleTalk(TINY).eval()
    inputs = _tiny_inputs()
    with torch.no_grad():
        ref = model(*inputs)
    model.save(tmp_path / "m.pt", extra={"note": "tiny"})
    loaded = StyleTalk.from_checkpoint(tmp_path / "m.pt")
    assert loaded.cfg == TINY and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(*inputs), ref)
    model.save(tmp_path / "m16.pt", half=True)
    loaded16 = StyleTalk.from_file(tmp_path / "m16.pt")
    assert all(p.dtype == torch.float32 for p in loaded16.parameters())
    with torch.no_grad():
        diff = (loaded16(*inputs) - ref).abs().max().item()
    assert 0 < diff < 0.05  # fp16 rounding only
    assert load_checkpoint(tmp_path / "m.pt").extra == {"note": "tiny"}


def test_from_file_accepts_official_layout(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = StyleTalk(TINY).eval()
    torch.save({"model_state_dict": model.state_dict(), "epoch": 1}, tmp_path / "official.pth")
    loaded = StyleTalk.from_file(tmp_path / "official.pth", TINY)
    inputs = _tiny_inputs(1)
    with torch.no_grad():
        assert torch.equal(loaded(*inputs), model(*inputs))
    with pytest.raises(CheckpointError, match="official checkpoint"):
        load_checkpoint(tmp_path / "official.pth")


def test_kind_mismatch_and_bad_files(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "r.pt", "renderer", {}, {"w": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="renderer"):
        StyleTalk.from_checkpoint(tmp_path / "r.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    v99 = {"format": "styletalk-live", "format_version": 99, "kind": "x", "config": {}, "state_dict": {}}
    torch.save(v99, tmp_path / "v99.pt")
    with pytest.raises(CheckpointError, match="format_version"):
        load_checkpoint(tmp_path / "v99.pt")


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    """weights_only loading: a file carrying arbitrary pickled objects is rejected, not executed."""
    evil = {
        "format": "styletalk-live",
        "format_version": 1,
        "kind": "x",
        "config": _NotPlain(),
        "state_dict": {},
    }
    torch.save(evil, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "evil.pt")


def test_save_rejects_unserialisable_config(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="config.obj"):
        save_checkpoint(tmp_path / "x.pt", "toy", {"obj": _NotPlain()}, {})
    with pytest.raises(TypeError, match="keys must be str"):
        save_checkpoint(tmp_path / "x.pt", "toy", {1: 2}, {})
    with pytest.raises(ValueError, match="kind"):
        save_checkpoint(tmp_path / "x.pt", "", {}, {})
    assert not (tmp_path / "x.pt").exists()


def test_strict_helpers(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    good = {k: torch.ones_like(v) for k, v in net.state_dict().items()}
    load_state_dict_strict(net, good)
    assert torch.equal(net[0].weight, torch.ones(3, 2))
    bad = dict(good)
    del bad["2.bias"]
    bad["9.weight"] = torch.zeros(1)
    bad["0.weight"] = torch.zeros(4, 2)
    with pytest.raises(CheckpointError) as err:
        load_state_dict_strict(net, bad, source="file.pt")
    msg = str(err.value)
    assert "missing keys (1): 2.bias" in msg and "unexpected keys (1): 9.weight" in msg
    assert "0.weight: checkpoint (4, 2) vs model (3, 2)" in msg and "file.pt" in msg
    assert torch.equal(net[0].weight, torch.ones(3, 2))  # nothing half-loaded

    groups, other = split_prefixed({"a.x": 1, "b.y.z": 2, "c": 3, "ab.q": 4}, ["a", "b"])
    assert groups == {"a": {"x": 1}, "b": {"y.z": 2}} and other == ["c", "ab.q"]

    torch.save({"net_G_ema": good, "optimizer": {}}, tmp_path / "o.pth")
    assert set(load_official_state_dict(tmp_path / "o.pth", "net_G_ema")) == set(good)
    with pytest.raises(CheckpointError, match="top-level keys"):
        load_official_state_dict(tmp_path / "o.pth", "model_state_dict")
