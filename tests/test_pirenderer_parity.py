"""PIRenderer FaceGenerator: state-dict layout of the official full model and numerical parity with the
reference outputs stored in ``fixtures/renderer_small.pt`` (see ``fixtures/README.md``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.checkpoints import CheckpointError
from models.pirenderer import (
    FaceGenerator,
    RendererConfig,
    driving_windows,
    image_to_tensor,
    set_compute_discarded_branch,
    tensor_to_image,
)

OUTPUT_KEYS = ("descriptor", "flow_field", "warp_image", "fake_image")
TOL32 = {"descriptor": 1e-5, "flow_field": 5e-5, "warp_image": 5e-5, "fake_image": 5e-5}


pytestmark = pytest.mark.usefixtures("torch_single_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def renderer_keys(fixtures_dir: Path) -> dict[str, Any]:
    path = fixtures_dir / "renderer_keys.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def small(fixtures_dir: Path) -> dict[str, Any]:
    path = fixtures_dir / "renderer_small.pt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def small_model(small: dict[str, Any]) -> FaceGenerator:
    cfg = RendererConfig.from_dict(small["config"])
    return FaceGenerator.from_official(small["state_dict"]["net_G_ema"], cfg)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.double() - b.double()).abs().max())


# ------------------------------------------------------------------------------------------------ config


def test_default_config_is_the_official_full_config(renderer_keys: dict[str, Any]) -> None:
    assert RendererConfig().to_dict() == renderer_keys["config"]
    assert RendererConfig.from_dict(renderer_keys["config"]) == RendererConfig()


def test_config_round_trip_and_validation(small: dict[str, Any]) -> None:
    cfg = RendererConfig.from_dict(small["config"])
    assert cfg.to_dict() == small["config"]
    assert cfg.editing_net.base_nc == 8 and cfg.common.max_nc == 24
    with pytest.raises(ValueError, match="unknown keys"):
        RendererConfig.from_dict({"common": {"descriptor_ncc": 3}})
    with pytest.raises(ValueError, match="unknown renderer config sections"):
        RendererConfig.from_dict({"warping_net": {}})
    with pytest.raises(ValueError, match="descriptor_nc"):
        RendererConfig.from_dict({"mapping_net": {"descriptor_nc": 7}})


# ------------------------------------------------------------------------------------------ full layout


def test_full_model_state_dict_matches_official_layout(renderer_keys: dict[str, Any]) -> None:
    with torch.device("meta"):  # layout only: no need to allocate 90 MB of weights
        model = FaceGenerator()
    sd = model.state_dict()
    expected = renderer_keys["keys"]
    assert len(sd) == renderer_keys["num_state_dict_entries"] == 304
    assert list(sd) == [e["name"] for e in expected]  # same names, same order
    for e in expected:
        t = sd[e["name"]]
        assert list(t.shape) == e["shape"], e["name"]
        assert str(t.dtype).removeprefix("torch.") == e["dtype"], e["name"]
    params = dict(model.named_parameters())
    assert all(e["kind"] == "parameter" and e["name"] in params for e in expected)
    assert list(model.buffers()) == []
    assert sum(p.numel() for p in model.parameters()) == renderer_keys["total_parameters"] == 22_519_109
    for name, info in renderer_keys["per_submodule"].items():
        sub = getattr(model, name)
        assert sum(p.numel() for p in sub.parameters()) == info["parameters"], name
        assert len(sub.state_dict()) == info["state_dict_entries"], name


# ---------------------------------------------------------------------------------------------- parity


def test_small_fixture_float32_parity(small: dict[str, Any], small_model: FaceGenerator) -> None:
    inp = small["inputs"]
    with torch.inference_mode():
        out = small_model(inp["source_image"], inp["driving_windows"])
        desc = small_model.descriptor(inp["driving_windows"])
    assert sum(p.numel() for p in small_model.parameters()) == 476_057
    for key in OUTPUT_KEYS:
        assert out[key].dtype == torch.float32
        assert _max_diff(out[key], small["outputs"][key]) <= TOL32[key], key
    assert _max_diff(desc, small["outputs"]["descriptor"]) <= TOL32["descriptor"]


def test_small_fixture_float64_parity(small: dict[str, Any]) -> None:
    cfg = RendererConfig.from_dict(small["config"])
    model = FaceGenerator.from_official(small["state_dict"]["net_G_ema"], cfg).double()
    inp = small["inputs"]
    with torch.inference_mode():
        out = model(inp["source_image"].double(), inp["driving_windows"].double())
    for key in OUTPUT_KEYS:
        assert _max_diff(out[key], small["outputs_float64"][key]) <= 1e-9, key


def test_cached_source_path_matches_reference(small: dict[str, Any]) -> None:
    """encode_source + render_cached (the streaming path) computes the same function as forward."""
    cfg = RendererConfig.from_dict(small["config"])
    model = FaceGenerator.from_official(small["state_dict"]["net_G_ema"], cfg).double()
    inp = small["inputs"]
    with torch.inference_mode():
        for b in range(2):
            cache = model.encode_source(inp["source_image"][b : b + 1].double())
            out = model.render_cached(cache, model.descriptor(inp["driving_windows"][b : b + 1].double()))
            for key in OUTPUT_KEYS:
                assert _max_diff(out[key][0], small["outputs_float64"][key][b]) <= 1e-9, key


def test_driving_windows_reproduce_fixture(small: dict[str, Any]) -> None:
    inp = small["inputs"]
    w = driving_windows(inp["driving_sequence"], inp["window_frames"])
    assert w.shape == (2, 73, 27)
    assert torch.equal(w, inp["driving_windows"])
    # numpy input and clamping at both ends
    seq = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)
    w = driving_windows(seq, [0, 4], radius=3)
    assert w[0, 0].tolist() == [0, 0, 0, 0, 2, 4, 6]
    assert w[1, 1].tolist() == [3, 5, 7, 9, 9, 9, 9]


# ------------------------------------------------------------------------------------ quirks and loading


def test_editing_residual_block_discards_first_branch(small: dict[str, Any], small_model: FaceGenerator) -> None:
    inp = small["inputs"]
    src, win = inp["source_image"], inp["driving_windows"]
    model = FaceGenerator(small_model.cfg)
    model.load_state_dict(small_model.state_dict())
    with torch.inference_mode():
        ref = model(src, win)["fake_image"]
        block = model.editing_net.decoder.res1.res0
        block.conv1.weight.mul_(-3.0)
        block.norm1.mlp_gamma.bias.add_(5.0)
        assert torch.equal(model(src, win)["fake_image"], ref)  # dead branch: no effect
        set_compute_discarded_branch(model, True)  # reference cost, same result
        assert torch.equal(model(src, win)["fake_image"], ref)
        block.conv2.weight.mul_(-3.0)
        assert _max_diff(model(src, win)["fake_image"], ref) > 1e-3  # the live branch matters


def test_from_official_is_strict_and_ignores_other_entries(small: dict[str, Any], tmp_path: Path) -> None:
    cfg = RendererConfig.from_dict(small["config"])
    sd = dict(small["state_dict"]["net_G_ema"])
    path = tmp_path / "official.pt"
    torch.save({"net_G_ema": sd, "net_G": {"x": torch.zeros(1)}, "current_epoch": 190}, path)
    model = FaceGenerator.from_official(path, cfg)
    assert not model.training
    assert torch.equal(model.state_dict()["warpping_net.flow_out.2.weight"], sd["warpping_net.flow_out.2.weight"])

    bad = dict(sd)
    bad["warping_net.flow_out.2.weight"] = bad.pop("warpping_net.flow_out.2.weight")  # misspelt name
    torch.save({"net_G_ema": bad}, path)
    with pytest.raises(CheckpointError) as err:
        FaceGenerator.from_official(path, cfg)
    assert "missing keys (1): warpping_net.flow_out.2.weight" in str(err.value)
    assert "unexpected keys (1): warping_net.flow_out.2.weight" in str(err.value)

    torch.save({"net_G": sd}, path)
    with pytest.raises(CheckpointError, match="net_G_ema"):
        FaceGenerator.from_official(path, cfg)
    with pytest.raises(CheckpointError, match="shape"):
        FaceGenerator.from_official(sd)  # full config, small weights
    assert FaceGenerator.from_official({"net_G_ema": sd, "epoch": 1}, cfg).cfg == cfg  # loaded dict


def test_own_format_round_trip(small_model: FaceGenerator, small: dict[str, Any], tmp_path: Path) -> None:
    inp = small["inputs"]
    path = tmp_path / "pir.pt"
    small_model.save(path)
    loaded = FaceGenerator.from_file(path)  # config travels with the weights
    assert loaded.cfg == small_model.cfg
    with torch.inference_mode():
        assert torch.equal(
            loaded(inp["source_image"], inp["driving_windows"])["fake_image"],
            small_model(inp["source_image"], inp["driving_windows"])["fake_image"],
        )
    official = tmp_path / "official.pt"
    torch.save({"net_G_ema": small_model.state_dict()}, official)
    assert FaceGenerator.from_file(official, small_model.cfg).cfg == small_model.cfg
    with pytest.raises(CheckpointError):
        FaceGenerator.from_file(tmp_path / "missing.pt")


def test_image_size_must_be_a_multiple_of_32(small_model: FaceGenerator) -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        small_model(torch.zeros(1, 3, 48, 48), torch.zeros(1, 73, 27))


def test_image_conversions() -> None:
    img = np.array([[[0, 128, 255]]], dtype=np.uint8)  # (1, 1, 3)
    t = image_to_tensor(img)
    assert t.shape == (1, 3, 1, 1) and t.dtype == torch.float32
    assert t.flatten().tolist() == pytest.approx([-1.0, (128 / 255 - 0.5) / 0.5, 1.0], abs=1e-6)
    x = torch.tensor([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0]).view(1, 1, 1, 6).expand(1, 3, 1, 6)
    out = tensor_to_image(x)
    assert out.dtype == np.uint8 and out.shape == (1, 1, 6, 3)
    assert out[0, 0, :, 0].tolist() == [0, 0, 127, 254, 255, 255]  # clamped, truncated (127.5 -> 127)
    # round trip: truncation (not rounding) makes some values come back one lower, never higher
    ramp = np.arange(256, dtype=np.uint8).reshape(1, 256, 1).repeat(3, axis=2)
    back = tensor_to_image(image_to_tensor(ramp))[0, 0].astype(int) - ramp[0]  # (256, 3)
    assert set(np.unique(back)) <= {-1, 0} and back[255, 0] == 0 and back[0, 0] == 0
