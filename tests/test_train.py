"""StyleTalk training: losses, switches, learning, exact resumption, the CLI."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from models.dataset import DataSplit, make_split
from models.discriminators import (
    DiscriminatorConfig,
    LipSyncDiscriminator,
    StyleDiscriminator,
    TemporalDiscriminator,
    misaligned,
    sync_d_loss,
)
from models.styletalk import StyleTalk
from models.train import (
    TrainConfig,
    Trainer,
    load_style_codes,
    main,
    reconstruction_loss,
    triplet_loss,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TINY = dict(
    d_model=32,
    nhead=2,
    dim_feedforward=48,
    layers=1,
    ph_embed_dim=8,
    dynamic_k=2,
    batch_size=4,
    cross_style=2,
    seq_len=16,
    ref_min=16,
    real_batch=4,
    progress=False,
)


@pytest.fixture(scope="module")
def split(samples_dir: Path) -> DataSplit:
    d = samples_dir
    if not d.is_dir():
        pytest.skip(f"{d} not found")
    return make_split(d)


def tiny(tmp_path: Path, **kw) -> TrainConfig:
    return TrainConfig(out_dir=str(tmp_path / "run"), **{**TINY, **kw})


# ------------------------------------------------------------------------------------------------ losses
def test_reconstruction_loss_splits_lower_and_upper_face() -> None:
    pred = torch.zeros(2, 3, 64)
    target = torch.zeros(2, 3, 64)
    target[..., 0] = 1.3  # a lower-face index
    target[..., 6] = 5.1  # an upper-face index
    lower, upper = reconstruction_loss(pred, target)
    assert lower.item() == pytest.approx(1.3 / 13)
    assert upper.item() == pytest.approx(5.1 / 51)


def test_triplet_loss() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    far = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [5.1, 0.0]])
    assert triplet_loss(far, labels, margin=1.0).item() == 0.0  # positives far closer than negatives
    mixed = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.5, 0.0], [3.5, 0.0]], requires_grad=True)
    loss = triplet_loss(mixed, labels, margin=1.0)
    assert loss.item() > 1.0
    loss.backward()
    assert torch.isfinite(mixed.grad).all() and mixed.grad.abs().sum() > 0
    # no valid triple (all one style) -> zero, still differentiable
    assert triplet_loss(mixed, torch.zeros(4, dtype=torch.long), 1.0).item() == 0.0


def test_discriminators_shapes_and_sync_negatives() -> None:
    cfg = DiscriminatorConfig(num_styles=5)
    torch.manual_seed(0)
    windows = torch.randint(0, 41, (3, 20, 11))
    seq = torch.randn(3, 20, 64)
    assert LipSyncDiscriminator(cfg)(windows, seq[..., :13]).shape == (3, 16)
    assert StyleDiscriminator(cfg)(seq).shape == (3, 5)
    assert TemporalDiscriminator(cfg)(seq).shape[0] == 3
    mouth = torch.arange(20.0).view(1, 20, 1).expand(3, 20, 13)
    shifted = misaligned(mouth, torch.Generator().manual_seed(0))
    shift = (shifted[:, 0, 0] - mouth[:, 0, 0]) % 20
    assert ((shift >= 4) & (shift <= 16)).all()  # rolled by at least 4 frames
    assert torch.equal(shifted.sort(dim=1).values, mouth)  # same frames, other order


def test_sync_discriminator_learns_alignment() -> None:
    """Mouth opening follows a phoneme class; the discriminator must learn to tell aligned from shifted."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    disc = LipSyncDiscriminator(DiscriminatorConfig())
    opt = torch.optim.Adam(disc.parameters(), 3e-3)
    ph = torch.randint(0, 41, (8, 16), generator=gen)
    windows = torch.stack(
        [torch.nn.functional.pad(ph, (5, 5), value=31)[:, i : i + 11] for i in range(16)], 1
    )
    mouth = (ph % 3).float().unsqueeze(-1).repeat(1, 1, 13) + 0.05 * torch.randn(8, 16, 13, generator=gen)
    first = sync_d_loss(disc, windows, mouth, gen).item()
    for _ in range(15):
        loss = sync_d_loss(disc, windows, mouth, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


# ------------------------------------------------------------------------------------------------ trainer
LOSS_KEYS = {"triplet": "triplet", "sync": "g_sync", "style": "g_style", "temporal": "g_temporal"}


def test_each_loss_computes_and_is_switchable(split: DataSplit, tmp_path: Path) -> None:
    logs = Trainer(tiny(tmp_path), split).train_step()
    for key in (
        "rec_lower",
        "rec_upper",
        "triplet",
        "g_sync",
        "g_style",
        "g_temporal",
        "d_sync",
        "d_style",
        "d_temporal",
        "loss",
    ):
        assert np.isfinite(logs[key]), key
    for name, key in LOSS_KEYS.items():
        trainer = Trainer(tiny(tmp_path, **{f"w_{name}": 0.0}), split)
        off = trainer.train_step()
        assert key not in off and np.isfinite(off["loss"])
        assert name not in trainer.discs  # a disabled adversarial loss builds no discriminator
    bare = Trainer(tiny(tmp_path, w_triplet=0.0, w_sync=0.0, w_style=0.0, w_temporal=0.0), split)
    assert bare.opt_d is None and len(bare.discs) == 0
    only_rec = bare.train_step()
    assert only_rec["loss"] == pytest.approx(only_rec["rec_lower"] + only_rec["rec_upper"], rel=1e-5)
    no_upper = Trainer(
        tiny(tmp_path, w_upper=0.0, w_triplet=0.0, w_sync=0.0, w_style=0.0, w_temporal=0.0), split
    ).train_step()
    assert no_upper["loss"] == pytest.approx(no_upper["rec_lower"], rel=1e-5)


def test_two_steps_reduce_the_loss(split: DataSplit, tmp_path: Path) -> None:
    trainer = Trainer(tiny(tmp_path, dropout=0.0, lr=2e-3, warmup=1, ema=0.0), split)
    batch = trainer.sampler.batch(4, np.random.default_rng(0), cross_style=2)
    has = batch.has_target

    def rec() -> float:
        trainer.model.eval()
        with torch.no_grad():
            pred = trainer.model(batch.windows, batch.reference, batch.reference_mask)
        lower, upper = reconstruction_loss(pred[has], batch.target[has])
        return float(lower + upper)

    before = rec()
    trainer.train_step(batch)
    trainer.train_step(batch)
    assert rec() < 0.97 * before


def _state_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, dict):
            if not _state_equal(x, y):
                return False
        elif isinstance(x, torch.Tensor):
            if not torch.equal(x, y):
                return False
        elif isinstance(x, list) and x and isinstance(x[0], dict):
            if len(x) != len(y) or not all(_state_equal(p, q) for p, q in zip(x, y, strict=True)):
                return False
        elif x != y:
            return False
    return True


def test_resume_matches_uninterrupted_run(split: DataSplit, tmp_path: Path) -> None:
    cfg = tiny(tmp_path, steps=4, val_every=100, ckpt_every=100)
    straight = Trainer(replace(cfg, out_dir=str(tmp_path / "a")), split)
    straight.train(4)
    first = Trainer(replace(cfg, out_dir=str(tmp_path / "b")), split)
    first.train(2)
    path = first.save()
    resumed = Trainer(replace(cfg, out_dir=str(tmp_path / "b"), threads=1), split)  # operational change ok
    resumed.load(path)
    assert resumed.step == 2
    resumed.train(2)
    a, b = straight.state_dict(), resumed.state_dict()
    a.pop("config"), b.pop("config")
    assert _state_equal(a, b)
    # a different run configuration must not silently resume
    with pytest.raises(ValueError, match="seed"):
        Trainer(replace(cfg, seed=1), split).load(path)


def test_cli_trains_exports_and_resumes(split: DataSplit, tmp_path: Path, samples_dir: Path) -> None:
    out = tmp_path / "cli"
    args = [
        "--data",
        str(samples_dir),
        "--out",
        str(out),
        "--steps",
        "2",
        "--val-every",
        "2",
        "--d-model",
        "32",
        "--nhead",
        "2",
        "--dim-feedforward",
        "48",
        "--layers",
        "1",
        "--ph-embed-dim",
        "8",
        "--dynamic-k",
        "2",
        "--batch-size",
        "2",
        "--cross-style",
        "0",
        "--seq-len",
        "16",
        "--ref-min",
        "16",
        "--real-batch",
        "2",
        "--no-progress",
        "--no-temporal",
        "--export",
        str(out / "model.pt"),
        "--export-style-codes",
        str(out / "codes.npz"),
        "--threads",
        "1",
    ]
    assert main(args) == 0
    model = StyleTalk.from_checkpoint(out / "model.pt")
    assert model.cfg.d_model == 32
    codes = load_style_codes(out / "codes.npz")
    assert {"neutral", "angry", "happy", "furious", "sad", "surprised", "nice", "crooked"} <= set(codes)
    assert all(v.shape == (32,) and v.dtype == np.float32 and np.isfinite(v).all() for v in codes.values())
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["step"] == 2 and state["config"]["w_temporal"] == 0.0
    assert main([*args, "--resume"]) == 0  # already complete: resumes at step 2 and stops
    assert torch.load(out / "train_state.pt", weights_only=True)["step"] == 2
    changed = [*args, "--resume", "--seed", "5"]
    assert main(changed) == 2  # a different run configuration is refused, not silently mixed


def test_validation_open_r_matches_the_benchmark_and_selection_uses_tails_only(
    split: DataSplit, tmp_path: Path
) -> None:
    from benchmarks.expression_quality import score
    from models.dataset import evaluation_items, mouth_direction
    from models.train import evaluate, predict

    trainer = Trainer(tiny(tmp_path, select_open_r=1.0, val_every=1), split)
    model = trainer.eval_model.eval()
    direction = mouth_direction(split)
    metrics = evaluate(model, trainer.val_items, direction)
    for kind in ("tail", "clip"):
        items = evaluation_items(split, kinds=(kind,))
        bench = score([predict(model, it.windows, it.reference) for it in items], items, direction)
        assert metrics[f"{kind}_open_r"] == pytest.approx(bench["mouth_open_corr"], abs=1e-6)
        assert metrics[f"{kind}_mouth_l1"] == pytest.approx(bench["mouth_l1"], abs=1e-6)
    assert "tail_open_r" not in evaluate(model, trainer.val_items)  # no direction, no r
    got = trainer.validate()
    # the selection score is tail mouth L1 minus the weighted tail r: the held-out clip's figures never enter
    assert trainer.best == pytest.approx(got["tail_mouth_l1"] - got["tail_open_r"], abs=1e-9)


def test_open_r_losses_ask_for_mouth_timing_only(split: DataSplit, tmp_path: Path) -> None:
    from models.train import open_r_loss

    g = torch.Generator().manual_seed(0)
    target = torch.randn(3, 16, 13, generator=g)
    direction = torch.nn.functional.normalize(torch.randn(13, generator=g), dim=0)
    assert float(open_r_loss(target, target, direction)) == pytest.approx(0.0, abs=1e-5)
    # offset and scale of the prediction do not matter, the sign of the motion does
    assert float(open_r_loss(3 * target + 1, target, direction)) == pytest.approx(0.0, abs=1e-5)
    assert float(open_r_loss(-target, target, direction)) == pytest.approx(2.0, abs=1e-5)

    base = Trainer(tiny(tmp_path), split)
    init = tmp_path / "init.pt"
    base.save_model(init, half=False)
    trainer = Trainer(tiny(tmp_path, init=str(init), w_open_r=0.5, w_open_teacher=0.5, dropout=0.0), split)
    assert trainer.teacher is not None
    logs = trainer.train_step()
    assert 0.0 <= logs["open_r"] <= 2.0
    # step 0: the student is the teacher, so their mouth timing agrees (train vs eval mode: the
    # transformer's eval fast path differs by rounding)
    assert logs["open_teacher"] == pytest.approx(0.0, abs=0.01)
    # the teacher stays frozen while the student moves
    for p_t, p_0 in zip(trainer.teacher.parameters(), StyleTalk.from_checkpoint(init).parameters(), strict=True):
        assert torch.equal(p_t, p_0)
    assert Trainer(tiny(tmp_path, w_open_teacher=0.5), split).teacher is None  # no --init: no teacher


def test_lower_face_fine_tuning_keeps_codes_and_upper_face(split: DataSplit, tmp_path: Path) -> None:
    from models.dataset import evaluation_items
    from models.train import LOWER, UPPER, predict

    base = Trainer(tiny(tmp_path, style_residual=True), split)
    init = tmp_path / "init.pt"
    base.save_model(init, half=False)
    other = Trainer(tiny(tmp_path, seed=3), split)  # a different network as the timing teacher
    teacher = tmp_path / "teacher.pt"
    other.save_model(teacher, half=False)
    lower_only = ["decoder.lower_decoder", "decoder.lower_tail_fc"]
    cfg = tiny(tmp_path, style_residual=True, init=str(init), trainable=lower_only, w_hold_mean=1.0,
               w_hold_std=1.0, w_open_teacher=0.5, open_teacher=str(teacher), dropout=0.0, lr=2e-3, warmup=1,
               ema=0.0)
    trainer = Trainer(cfg, split)
    assert trainer.teacher is not None and trainer.holder is not None and trainer.teacher is not trainer.holder
    first = trainer.train_step()
    # step 0: the student is the held start model, so the held statistics agree
    assert first["hold_mean"] == pytest.approx(0.0, abs=1e-5)
    assert first["hold_std"] == pytest.approx(0.0, abs=1e-5)
    for _ in range(2):
        trainer.train_step()
    start = StyleTalk.from_checkpoint(init)
    moved = {n for (n, p), p0 in zip(trainer.model.named_parameters(), start.parameters(), strict=True)
             if not torch.equal(p, p0)}
    assert moved and all(n.startswith(tuple(lower_only)) for n in moved)
    item = evaluation_items(split, kinds=("tail",))[0]
    new = predict(trainer.model.eval(), item.windows, item.reference)
    old = predict(start, item.windows, item.reference)
    # codes and upper face as before (to float rounding: the two models' kernels may take other paths)
    np.testing.assert_allclose(new[:, UPPER], old[:, UPPER], atol=1e-6)
    assert np.abs(new[:, LOWER] - old[:, LOWER]).max() > 1e-3
    with pytest.raises(ValueError, match="match no parameter"):
        Trainer(replace(cfg, trainable=["decoder.no_such_module"]), split)


def test_validation_identification_selects_on_validation_data_only(split: DataSplit, tmp_path: Path) -> None:
    from models.train import nearest_accuracy

    gallery = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    queries = np.array([[0.1, 0.0], [4.0, 4.0]])
    assert nearest_accuracy(queries, ["a", "b"], gallery, ["a", "a", "b"]) == 1.0
    # excluding its nearest row sends the first query to the next one
    assert nearest_accuracy(queries, ["a", "b"], gallery, ["a", "a", "b"], exclude=[0, None]) == 1.0
    assert nearest_accuracy(queries, ["a", "b"], gallery, ["a", "c", "b"], exclude=[0, None]) == 0.5

    trainer = Trainer(tiny(tmp_path, select_ident=2.0, val_every=1), split)
    probe = trainer.style_probe
    assert probe is not None and len(probe.clips) == len(split.style_train)
    # the probe decodes the clip tails' phonemes and compares with the style clips' training heads only
    assert probe.windows.shape[0] == sum(len(t) for t in split.val_tails)
    assert all(h is e for (_, h), e in zip(probe.clips, [c.exp for c in split.style_train], strict=True))
    got = trainer.validate()
    assert 0.0 <= got["style_ident"] <= 1.0
    assert trainer.best == pytest.approx(got["tail_mouth_l1"] - 2.0 * got["style_ident"], abs=1e-9)
