"""StyleTalk re-implementation vs the shared parity fixtures (key layout, reference outputs, properties)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from models.checkpoints import CheckpointError
from models.styletalk import (
    LOWER_FACE3D_INDICES,
    UPPER_FACE3D_INDICES,
    StyleTalk,
    StyleTalkConfig,
    sinusoid_table,
)

FLOAT32_TOL = 1e-5
FLOAT64_TOL = 1e-9
OUTPUTS = ("content", "style_code", "face3d")

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def small(fixtures_dir: Path) -> dict:
    return torch.load(fixtures_dir / "styletalk_small.pt", weights_only=True)


@pytest.fixture(scope="module")
def keys_doc(fixtures_dir: Path) -> dict:
    return json.loads((fixtures_dir / "styletalk_keys.json").read_text())


@pytest.fixture(scope="module")
def full_model() -> StyleTalk:
    torch.manual_seed(0)
    return StyleTalk(StyleTalkConfig())


def _small_model(small: dict) -> StyleTalk:
    model = StyleTalk(StyleTalkConfig.from_yacs(small["config"]))
    model.load_official_state_dict(small["state_dict"]["model_state_dict"])
    return model.eval()


def _run(model: StyleTalk, inputs: dict, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        content = model.encode_content(inputs["phoneme_windows"])
        style = model.encode_style(inputs["style_clip"].to(dtype), inputs["style_pad_mask"])
        face3d = model.decode(content, style)
    return {"content": content, "style_code": style, "face3d": face3d}


def _max_diff(a: dict, b: dict) -> dict[str, float]:
    return {k: (a[k] - b[k]).abs().max().item() for k in OUTPUTS}


# ------------------------------------------------------------------------------------------- layout / config
def test_full_config_matches_official_tree(keys_doc: dict) -> None:
    cfg = StyleTalkConfig.from_yacs(keys_doc["config"])
    assert cfg == StyleTalkConfig()
    assert cfg.lower_face3d_indices == LOWER_FACE3D_INDICES
    assert cfg.to_yacs() == keys_doc["config"]


def test_state_dict_layout_matches_official(full_model: StyleTalk, keys_doc: dict) -> None:
    params = dict(full_model.named_parameters())
    got = [
        (
            name,
            list(t.shape),
            str(t.dtype).removeprefix("torch."),
            "parameter" if name in params else "buffer",
        )
        for name, t in full_model.state_dict().items()
    ]
    expected = [(e["name"], e["shape"], e["dtype"], e["kind"]) for e in keys_doc["keys"]]
    assert got == expected  # names, shapes, dtypes, parameter/buffer split and order
    assert len(got) == keys_doc["num_state_dict_entries"] == 220


def test_parameter_counts_match_official(full_model: StyleTalk, keys_doc: dict) -> None:
    assert sum(p.numel() for p in full_model.parameters()) == keys_doc["total_parameters"]
    for name, counts in keys_doc["per_submodule"].items():
        sub = getattr(full_model, name)
        assert sum(p.numel() for p in sub.parameters()) == counts["parameters"], name
        assert (
            sum(b.numel() for b in sub.state_dict().values()) - sum(p.numel() for p in sub.parameters())
            == counts["buffer_elements"]
        ), name
        assert len(sub.state_dict()) == counts["state_dict_entries"], name


def test_config_round_trips() -> None:
    cfg = StyleTalkConfig(d_model=32, nhead=2, num_decoder_layers=1)
    assert StyleTalkConfig.from_dict(cfg.to_dict()) == cfg
    assert StyleTalkConfig.from_yacs(cfg.to_yacs()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        StyleTalkConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_unsupported_yacs_settings_are_rejected(keys_doc: dict) -> None:
    tree = json.loads(json.dumps(keys_doc["config"]))
    tree["DECODER"]["normalize_before"] = True
    with pytest.raises(ValueError, match="normalize_before"):
        StyleTalkConfig.from_yacs(tree)
    tree = json.loads(json.dumps(keys_doc["config"]))
    tree["STYLE_ENCODER"]["nhead"] = 4
    with pytest.raises(ValueError, match="nhead"):
        StyleTalkConfig.from_yacs(tree)


def test_position_tables_are_the_reference_sinusoids(small: dict) -> None:
    """Freshly built buffers equal the fixture's bit for bit (they are computed, not loaded)."""
    fresh = StyleTalk(StyleTalkConfig.from_yacs(small["config"])).state_dict()
    stored = small["state_dict"]["model_state_dict"]
    names = [k for k in fresh if k.endswith("pos_table")]
    assert len(names) == 3
    for name in names:
        assert fresh[name].dtype == torch.float32
        assert torch.equal(fresh[name], stored[name]), name
    table = sinusoid_table(256, 256)[0].double()
    pos = torch.arange(256, dtype=torch.float64)[:, None]
    freq = 10000.0 ** (2 * (torch.arange(256) // 2) / 256).double()
    ref = torch.where(torch.arange(256) % 2 == 0, torch.sin(pos / freq), torch.cos(pos / freq))
    assert (table - ref).abs().max().item() < 1e-7  # float32 rounding of the float64 table only


# ---------------------------------------------------------------------------------------- reference outputs
def test_small_fixture_float32(small: dict) -> None:
    out = _run(_small_model(small), small["inputs"])
    diffs = _max_diff(out, small["outputs"])
    for k in OUTPUTS:
        assert out[k].shape == small["outputs"][k].shape
        assert diffs[k] <= FLOAT32_TOL, diffs


def test_small_fixture_float64(small: dict) -> None:
    model = _small_model(small).double()
    out = _run(model, small["inputs"], torch.float64)
    diffs = _max_diff(out, small["outputs_float64"])
    for k in OUTPUTS:
        assert out[k].dtype == torch.float64
        assert diffs[k] <= FLOAT64_TOL, diffs


def test_forward_equals_staged_calls(small: dict) -> None:
    model = _small_model(small)
    inp = small["inputs"]
    with torch.no_grad():
        out = model(inp["phoneme_windows"], inp["style_clip"], inp["style_pad_mask"])
    assert (out - small["outputs"]["face3d"]).abs().max().item() <= FLOAT32_TOL


# ------------------------------------------------------------------------------------------------ properties
def test_pad_mask_equals_unpadded_clip(small: dict) -> None:
    model = _small_model(small)
    inp = small["inputs"]
    mask = inp["style_pad_mask"][1]
    n_valid = int((~mask).sum())
    assert n_valid == 156
    with torch.no_grad():
        padded = model.encode_style(inp["style_clip"][1:2], inp["style_pad_mask"][1:2])
        unpadded = model.encode_style(inp["style_clip"][1:2, :n_valid])
        unmasked = model.encode_style(inp["style_clip"][1:2])
    assert (padded - unpadded).abs().max().item() < 1e-6
    # and the mask matters: attending to the zero frames gives a clearly different code
    assert (padded - unmasked).abs().max().item() > 0.05


def test_single_frame_single_clip_matches_batched(small: dict) -> None:
    """B = N = 1 works (the reference crashes there) and equals the same window decoded in a batch."""
    model = _small_model(small)
    content = small["outputs"]["content"]
    style = small["outputs"]["style_code"]
    with torch.no_grad():
        batched = model.decode(content, style)
        for b, n in ((0, 0), (1, 3), (1, 6)):
            single = model.decode(content[b : b + 1, n : n + 1], style[b : b + 1])
            assert single.shape == (1, 1, 64)
            assert (single[0, 0] - batched[b, n]).abs().max().item() < 1e-6
        one_clip = model.decode(content[1:2], style[1:2])
    assert (one_clip[0] - batched[1]).abs().max().item() < 1e-6


def test_train_mode_changes_outputs(small: dict) -> None:
    """Dropout is active in train mode, so the fixture comparison really depends on eval()."""
    model = _small_model(small)
    inp = small["inputs"]
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        train_out = model(inp["phoneme_windows"], inp["style_clip"], inp["style_pad_mask"])
    assert (train_out - small["outputs"]["face3d"]).abs().max().item() > 0.05
    model.eval()
    with torch.no_grad():
        eval_out = model(inp["phoneme_windows"], inp["style_clip"], inp["style_pad_mask"])
    assert (eval_out - small["outputs"]["face3d"]).abs().max().item() <= FLOAT32_TOL


def test_temperature_and_style_matter(small: dict) -> None:
    """Fixture discriminates the temperature-30 expert mixing and the style conditioning."""
    model = _small_model(small)
    content = small["outputs"]["content"]
    style = small["outputs"]["style_code"]
    ref = small["outputs"]["face3d"]
    for stack in (model.decoder.upper_decoder, model.decoder.lower_decoder):
        for layer in stack.layers:
            layer.linear1.dynamic_conv.attention.temperature = 1.0
    with torch.no_grad():
        assert (model.decode(content, style) - ref).abs().max().item() > 0.05
    model = _small_model(small)
    with torch.no_grad():
        swapped = model.decode(content, style.flip(0))
    assert (swapped - ref).abs().max().item() > 0.05


def test_upper_lower_split_lands_on_configured_indices(small: dict) -> None:
    """Zeroing the lower tail's last layer zeroes exactly the 13 lower-face coefficients."""
    model = _small_model(small)
    with torch.no_grad():
        model.decoder.lower_tail_fc[4].weight.zero_()
        model.decoder.lower_tail_fc[4].bias.zero_()
        out = model.decode(small["outputs"]["content"], small["outputs"]["style_code"])
    ref = small["outputs"]["face3d"]
    lower, upper = list(LOWER_FACE3D_INDICES), list(UPPER_FACE3D_INDICES)
    assert torch.all(out[..., lower] == 0)
    assert (out[..., upper] - ref[..., upper]).abs().max().item() <= FLOAT32_TOL
    assert ref[..., lower].abs().min().item() > 0


# ----------------------------------------------------------------------------------------- strict loading
def _write_official(path: Path, state: dict) -> Path:
    torch.save({"model_state_dict": state, "epoch": 3, "optimizer": {"lr": 1e-4}}, path)
    return path


def test_from_official_loads_file_strictly(small: dict, tmp_path: Path) -> None:
    cfg = StyleTalkConfig.from_yacs(small["config"])
    path = _write_official(tmp_path / "ok.pth", small["state_dict"]["model_state_dict"])
    model = StyleTalk.from_official(path, cfg)
    assert not model.training
    diffs = _max_diff(_run(model, small["inputs"]), small["outputs"])
    assert max(diffs.values()) <= FLOAT32_TOL


def test_strict_loading_reports_missing_unexpected_and_shapes(small: dict, tmp_path: Path) -> None:
    cfg = StyleTalkConfig.from_yacs(small["config"])
    state = dict(small["state_dict"]["model_state_dict"])
    del state["decoder.lower_decoder.norm.weight"]
    del state["content_encoder.pos_embed.pos_table"]
    state["style_encoder.extra_head.weight"] = torch.zeros(3)
    state["decoder.upper_tail_fc.4.bias"] = torch.zeros(50)
    with pytest.raises(CheckpointError) as err:
        StyleTalk.from_official(_write_official(tmp_path / "bad.pth", state), cfg)
    msg = str(err.value)
    for needle in (
        "lower_decoder.norm.weight",
        "pos_embed.pos_table",
        "extra_head.weight",
        "upper_tail_fc.4.bias",
        "missing",
        "unexpected",
        "shape",
    ):
        assert needle in msg, needle


def test_wrong_config_fails_clearly(small: dict, tmp_path: Path) -> None:
    path = _write_official(tmp_path / "small.pth", small["state_dict"]["model_state_dict"])
    with pytest.raises(CheckpointError, match="shape mismatches"):
        StyleTalk.from_official(path)  # full default config vs small weights


def test_other_prefixes_are_ignored_like_the_reference(small: dict, tmp_path: Path) -> None:
    cfg = StyleTalkConfig.from_yacs(small["config"])
    state = dict(small["state_dict"]["model_state_dict"])
    state["discriminator.fc.weight"] = torch.zeros(2, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = StyleTalk.from_official(_write_official(tmp_path / "extra.pth", state), cfg)
    assert any("discriminator.fc.weight" in str(w.message) for w in caught)
    assert max(_max_diff(_run(model, small["inputs"]), small["outputs"]).values()) <= FLOAT32_TOL


def test_missing_model_state_dict_entry(tmp_path: Path) -> None:
    path = tmp_path / "renderer.pth"
    torch.save({"net_G_ema": {"a": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="model_state_dict"):
        StyleTalk.from_official(path)


def test_input_validation() -> None:
    model = StyleTalk(StyleTalkConfig(d_model=16, nhead=2, dim_feedforward=16, ph_embed_dim=8)).eval()
    with pytest.raises(ValueError, match="windows"):
        model.encode_content(torch.zeros(1, 3, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="style clip"):
        model.encode_style(torch.zeros(1, 257, 64))
    with pytest.raises(ValueError, match="pad_mask"):
        model.encode_style(torch.zeros(1, 256, 64), torch.zeros(1, 255, dtype=torch.bool))


def test_prepared_style_gives_identical_output(small: dict) -> None:
    model = _small_model(small)
    content = small["outputs"]["content"]
    style = small["outputs"]["style_code"]
    with torch.no_grad():
        prepared = model.prepare_style(style)
        direct = model.decode(content, style)
        assert torch.equal(model.decode(content, prepared), direct)
        single = model.decode(content[1:2, 2:3], model.prepare_style(style[1:2]))
    assert len(prepared.upper) == len(prepared.lower) == 2
    assert (single[0, 0] - direct[1, 2]).abs().max().item() < 1e-6
    assert (direct - small["outputs"]["face3d"]).abs().max().item() <= FLOAT32_TOL
