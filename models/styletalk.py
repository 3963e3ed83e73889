"""StyleTalk expression generator (Ma et al., AAAI 2023), state-dict compatible with the official checkpoints.

Three networks, named like the official sub-modules so that ``state_dict()`` keys equal the checkpoint's:

* ``content_encoder`` - phoneme windows ``(B, N, 11)`` -> embedding -> transformer encoder ->
  ``(B, N, 11, C)``.
* ``style_encoder``  - 3DMM expression clip ``(B, 256, 64)`` -> transformer encoder with key padding mask ->
  self-attention pooling -> style code ``(B, C)``.
* ``decoder``        - two independent "style-controllable dynamic" transformer decoders (upper / lower face)
  whose first FFN linear mixes K=8 expert weight sets by ``softmax(MLP(style) / 30)``; each decodes only the
  middle token of every window and the two outputs (51 + 13 values) are scattered into the 64 coefficients.

Semantics follow the reference implementation exactly (see ``tests/fixtures/parity/README.md``): post-norm
layers, positional encodings added once at the stack input, decoder query = positions + style code, memory
= content features without positions, pad-masked frames get -100000 in the pooling score, dropout 0.1 in
every layer (so outputs are reproducible only in ``eval()``). Tensors are batch-first internally (the
reference is sequence-first; the arithmetic is the same). Deliberate differences, none changing the result:
the dynamic weights are mixed once per clip instead of once per window, the last decoder layer computes only
the middle token (the only one read), and a single window of a single clip works (the reference fails).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.checkpoints import (
    CheckpointError,
    load_checkpoint,
    load_official_state_dict,
    load_state_dict_strict,
    save_checkpoint,
    split_prefixed,
)
from models.clips import LOWER_FACE3D_INDICES, UPPER_FACE3D_INDICES

DYNAMIC_TEMPERATURE = 30.0  # fixed in the reference code (neither in the config nor in the state dict)
SUBMODULES: tuple[str, ...] = ("content_encoder", "style_encoder", "decoder")
CHECKPOINT_KIND = "styletalk"


# --------------------------------------------------------------------------------------------------- config
@dataclass
class StyleTalkConfig:
    """Hyper-parameters; the defaults are the official full model (22,442,689 parameters)."""

    d_model: int = 256
    nhead: int = 8
    dim_feedforward: int = 1024
    dropout: float = 0.1
    activation: str = "relu"
    num_content_layers: int = 3
    num_style_layers: int = 3
    num_decoder_layers: int = 3
    ph_embed_dim: int = 128
    num_phonemes: int = 41
    win_size: int = 5  # window = 2 * win_size + 1 = 11 frames
    content_pos_embed_len: int = 11
    style_pos_embed_len: int = 256  # also the maximum style clip length
    decoder_pos_embed_len: int = 11
    face3d_dim: int = 64
    aggregate_method: str = "self_attention_pooling"  # or "average" (masked mean; not used by the release)
    dynamic_k: int = 8
    dynamic_ratio: int = 4
    dynamic_temperature: float = DYNAMIC_TEMPERATURE
    upper_face3d_indices: tuple[int, ...] = UPPER_FACE3D_INDICES
    lower_face3d_indices: tuple[int, ...] = LOWER_FACE3D_INDICES
    # not in the official model: a linear map from the style code straight to the 64 coefficients, added to
    # the decoder's output. The code carries the style's mean expression (a linear probe reads it with
    # R^2 0.95) but the official decoder passes it only through attention queries and the expert mixture,
    # so it learns to reproduce a style's static pose very slowly on small data; this path carries it
    # directly, costs one (C x 64) matrix-vector product per decode call, and is linear in the code, so
    # intensity (a line in code space) scales the static pose exactly.
    style_residual: bool = False

    def __post_init__(self) -> None:
        self.upper_face3d_indices = tuple(int(i) for i in self.upper_face3d_indices)
        self.lower_face3d_indices = tuple(int(i) for i in self.lower_face3d_indices)
        if self.d_model % self.nhead:
            raise ValueError(f"d_model {self.d_model} is not divisible by nhead {self.nhead}")
        if self.activation not in ("relu", "gelu"):
            raise ValueError(f"activation must be 'relu' or 'gelu', got {self.activation!r}")
        if self.aggregate_method not in ("self_attention_pooling", "average"):
            raise ValueError(f"unknown aggregate_method {self.aggregate_method!r}")
        if self.d_model <= self.dynamic_ratio:
            raise ValueError(
                "d_model must exceed dynamic_ratio (expert selector hidden width d_model // ratio)"
            )
        if min(self.content_pos_embed_len, self.decoder_pos_embed_len) < self.window_length:
            raise ValueError(f"content/decoder pos_embed_len must be >= window length {self.window_length}")
        both = self.upper_face3d_indices + self.lower_face3d_indices
        if sorted(both) != list(range(self.face3d_dim)):
            raise ValueError(
                f"upper + lower face3d indices must be a permutation of range({self.face3d_dim}), got {both}"
            )

    @property
    def window_length(self) -> int:
        return 2 * self.win_size + 1

    # ---- plain dict (own checkpoint format)
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["upper_face3d_indices"] = list(self.upper_face3d_indices)
        d["lower_face3d_indices"] = list(self.lower_face3d_indices)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StyleTalkConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown StyleTalkConfig fields: {unknown}")
        return cls(**d)

    # ---- official yacs tree
    @classmethod
    def from_yacs(cls, tree: dict[str, Any]) -> StyleTalkConfig:
        """Build from the official yacs-style config tree (``cfg`` of the reference code, as a dict).

        Missing entries take the official defaults. Settings the reference would build differently
        (pre-norm, other decoder types, per-module widths that differ) raise ``ValueError``.
        """
        base = cls()
        ce = dict(tree.get("CONTENT_ENCODER", {}))
        se = dict(tree.get("STYLE_ENCODER", {}))
        de = dict(tree.get("DECODER", {}))
        face3d_dim = int(tree.get("DATASET", {}).get("FACE3D_DIM", base.face3d_dim))

        for key, expected in (
            ("DECODER_TYPE", "DisentangleDecoder"),
            ("CONTENT_ENCODER_TYPE", "ContentEncoder"),
            ("STYLE_ENCODER_TYPE", "StyleEncoder"),
        ):
            if tree.get(key, expected) != expected:
                raise ValueError(f"{key}={tree[key]!r} is not supported (only {expected!r})")
        if de.get("network_type", "DynamicFCDecoder") != "DynamicFCDecoder":
            raise ValueError(f"DECODER.network_type={de['network_type']!r} is not supported")
        if de.get("return_intermediate_dec", False):
            raise ValueError("DECODER.return_intermediate_dec=True is not supported")
        for name, sub in (("CONTENT_ENCODER", ce), ("STYLE_ENCODER", se), ("DECODER", de)):
            if sub.get("normalize_before", False):
                raise ValueError(f"{name}.normalize_before=True (pre-norm) is not supported")
        if int(se.get("input_dim", face3d_dim)) != face3d_dim:
            raise ValueError(
                "STYLE_ENCODER.input_dim must equal DATASET.FACE3D_DIM (the reference injects it)"
            )

        def shared(key: str, default: Any) -> Any:
            values = {repr(sub[key]) for sub in (ce, se, de) if key in sub}
            if key == "d_model" and "D_MODEL" in tree:
                values.add(repr(tree["D_MODEL"]))
            if len(values) > 1:
                raise ValueError(f"per-module {key} values differ ({sorted(values)}); not supported")
            for sub in (ce, se, de):
                if key in sub:
                    return sub[key]
            return tree.get("D_MODEL", default) if key == "d_model" else default

        return cls(
            d_model=int(shared("d_model", base.d_model)),
            nhead=int(shared("nhead", base.nhead)),
            dim_feedforward=int(shared("dim_feedforward", base.dim_feedforward)),
            dropout=float(shared("dropout", base.dropout)),
            activation=str(shared("activation", base.activation)),
            num_content_layers=int(ce.get("num_encoder_layers", base.num_content_layers)),
            num_style_layers=int(se.get("num_encoder_layers", base.num_style_layers)),
            num_decoder_layers=int(de.get("num_decoder_layers", base.num_decoder_layers)),
            ph_embed_dim=int(ce.get("ph_embed_dim", base.ph_embed_dim)),
            win_size=int(tree.get("WIN_SIZE", base.win_size)),
            content_pos_embed_len=int(ce.get("pos_embed_len", base.content_pos_embed_len)),
            style_pos_embed_len=int(se.get("pos_embed_len", base.style_pos_embed_len)),
            decoder_pos_embed_len=int(de.get("pos_embed_len", base.decoder_pos_embed_len)),
            face3d_dim=face3d_dim,
            aggregate_method=str(se.get("aggregate_method", base.aggregate_method)),
            dynamic_k=int(de.get("dynamic_K", base.dynamic_k)),
            dynamic_ratio=int(de.get("dynamic_ratio", base.dynamic_ratio)),
            upper_face3d_indices=tuple(de.get("upper_face3d_indices", base.upper_face3d_indices)),
            lower_face3d_indices=tuple(de.get("lower_face3d_indices", base.lower_face3d_indices)),
        )

    def to_yacs(self) -> dict[str, Any]:
        """The official config tree for this config (as built, i.e. with the injected input/output dims)."""
        if self.style_residual:
            raise ValueError("style_residual has no equivalent in the official config")
        common = {
            "d_model": self.d_model,
            "nhead": self.nhead,
            "dim_feedforward": self.dim_feedforward,
            "dropout": self.dropout,
            "activation": self.activation,
            "normalize_before": False,
        }

        def block(layers_key: str, layers: int, **rest: Any) -> dict[str, Any]:
            b = {"d_model": self.d_model, "nhead": self.nhead, layers_key: layers}
            b.update({k: v for k, v in common.items() if k not in b})
            b.update(rest)
            return b

        return {
            "TAG": "style_id_emotion",
            "DECODER_TYPE": "DisentangleDecoder",
            "CONTENT_ENCODER_TYPE": "ContentEncoder",
            "STYLE_ENCODER_TYPE": "StyleEncoder",
            "DISCRIMINATOR_TYPE": "Discriminator",
            "WIN_SIZE": self.win_size,
            "D_MODEL": self.d_model,
            "DATASET": {"FACE3D_DIM": self.face3d_dim},
            "CONTENT_ENCODER": block(
                "num_encoder_layers",
                self.num_content_layers,
                pos_embed_len=self.content_pos_embed_len,
                ph_embed_dim=self.ph_embed_dim,
            ),
            "STYLE_ENCODER": block(
                "num_encoder_layers",
                self.num_style_layers,
                pos_embed_len=self.style_pos_embed_len,
                aggregate_method=self.aggregate_method,
                input_dim=self.face3d_dim,
            ),
            "DECODER": block(
                "num_decoder_layers",
                self.num_decoder_layers,
                return_intermediate_dec=False,
                pos_embed_len=self.decoder_pos_embed_len,
                network_type="DynamicFCDecoder",
                dynamic_K=self.dynamic_k,
                dynamic_ratio=self.dynamic_ratio,
                upper_face3d_indices=list(self.upper_face3d_indices),
                lower_face3d_indices=list(self.lower_face3d_indices),
                output_dim=self.face3d_dim,
            ),
            "INFERENCE": {"CHECKPOINT": ""},
        }


# --------------------------------------------------------------------------------------------- components
MixedWeights = tuple[Tensor, Tensor]  # one dynamic layer's mixed (weight (B, out, in), bias (B, out))


@dataclass
class PreparedStyle:
    """Style codes ``(B, C)`` with every decoder layer's style-mixed FFN weights (see ``prepare_style``).

    ``upper_first`` / ``lower_first``: each stack's first layer after its self-attention, ``(B, W', C)``. The
    decoder's query is the style code plus positions, the same for every window, so that part of the first
    layer depends on the style only (W' = W, or 1 for a one-layer stack, which only computes the middle token).
    """

    code: Tensor
    upper: list[MixedWeights]
    lower: list[MixedWeights]
    upper_first: Tensor | None = None
    lower_first: Tensor | None = None


def sinusoid_table(n_position: int, d: int) -> Tensor:
    """Sinusoidal position table ``(1, n_position, d)``, computed in float64 and rounded to float32.

    Angle(p, j) = p / 10000^(2*floor(j/2)/d); sin on even channels, cos on odd ones. Computed with numpy in
    the reference's order of operations so the float32 values are bit-identical to the checkpoints'.
    """
    j = np.arange(d)
    denom = np.power(10000.0, (2 * (j // 2)).astype(np.float64) / d)
    angles = np.arange(n_position, dtype=np.float64)[:, None] / denom[None, :]  # (n, d) float64
    angles[:, 0::2] = np.sin(angles[:, 0::2])
    angles[:, 1::2] = np.cos(angles[:, 1::2])
    return torch.from_numpy(angles.astype(np.float32)).unsqueeze(0)


class PositionalEncoding(nn.Module):
    """Fixed sinusoid table as a persistent buffer ``pos_table`` (it is part of the official checkpoint)."""

    def __init__(self, d_model: int, max_len: int) -> None:
        super().__init__()
        self.register_buffer("pos_table", sinusoid_table(max_len, d_model), persistent=True)

    def forward(self, length: int) -> Tensor:
        return self.pos_table[:, :length]  # (1, L, C)


class MultiheadAttention(nn.Module):
    """Standard multi-head attention with the packed ``in_proj`` layout of ``nn.MultiheadAttention``.

    Batch-first. ``key_padding_mask`` (B, Lk) is True where a key must be ignored.
    """

    def __init__(self, d_model: int, nhead: int, dropout: float) -> None:
        super().__init__()
        self.nhead = nhead
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))  # rows: q, k, v
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: Tensor, key_value: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        b, lq, c = query.shape
        if query is key_value:
            q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            w_q, w_kv = self.in_proj_weight.split([c, 2 * c])
            b_q, b_kv = self.in_proj_bias.split([c, 2 * c])
            q = F.linear(query, w_q, b_q)
            k, v = F.linear(key_value, w_kv, b_kv).chunk(2, dim=-1)
        # (B, L, C) -> (B, H, L, C/H)
        q, k, v = (t.unflatten(-1, (self.nhead, -1)).transpose(1, 2) for t in (q, k, v))
        mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]  # True = attend
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, lq, c))


def _activation(name: str):
    return F.relu if name == "relu" else F.gelu


class EncoderLayer(nn.Module):
    """Post-norm transformer encoder layer (self-attention, ReLU FFN), as the reference's."""

    def __init__(self, cfg: StyleTalkConfig) -> None:
        super().__init__()
        d, p = cfg.d_model, cfg.dropout
        self.self_attn = MultiheadAttention(d, cfg.nhead, p)
        self.linear1 = nn.Linear(d, cfg.dim_feedforward)
        self.dropout = nn.Dropout(p)
        self.linear2 = nn.Linear(cfg.dim_feedforward, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.dropout1 = nn.Dropout(p)
        self.dropout2 = nn.Dropout(p)
        self.activation = _activation(cfg.activation)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        x = self.norm1(x + self.dropout1(self.self_attn(x, x, key_padding_mask)))
        return self.norm2(x + self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x))))))


class TransformerEncoder(nn.Module):
    """Stack of encoder layers; positions are added once to the input (no final norm: post-norm model)."""

    def __init__(self, cfg: StyleTalkConfig, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(num_layers))
        for p in self.parameters():  # reference initialisation (matters only for training from scratch)
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, x: Tensor, pos: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        x = x + pos
        for layer in self.layers:
            x = layer(x, key_padding_mask)
        return x


class ExpertSelector(nn.Module):
    """Style code -> K mixing weights: softmax(conv1x1(ReLU(conv1x1(style))) / temperature), no biases.

    Weights are stored as 1x1 convolutions (official layout ``net.0`` / ``net.2``) and applied as linears.
    """

    def __init__(self, d_style: int, ratio: int, k: int, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature
        hidden = d_style // ratio
        self.net = nn.Sequential(
            nn.Conv2d(d_style, hidden, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(hidden, k, kernel_size=1, bias=False),
        )
        for m in self.net:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, style: Tensor) -> Tensor:
        h = F.relu(F.linear(style, self.net[0].weight.flatten(1)))
        logits = F.linear(h, self.net[2].weight.flatten(1))  # (B, K)
        return torch.softmax(logits / self.temperature, dim=-1)


class DynamicWeights(nn.Module):
    """K expert weight/bias sets of a linear layer (official name ``dynamic_conv``, conv-shaped weights)."""

    def __init__(
        self, in_dim: int, out_dim: int, d_style: int, k: int, ratio: int, temperature: float
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, out_dim, in_dim, 1, 1))
        self.bias = nn.Parameter(torch.empty(k, out_dim))
        self.attention = ExpertSelector(d_style, ratio, k, temperature)
        bound = 1.0 / math.sqrt(in_dim)
        for i in range(k):
            nn.init.kaiming_uniform_(self.weight[i], a=math.sqrt(5))
        nn.init.uniform_(self.bias, -bound, bound)

    def mix(self, style: Tensor) -> tuple[Tensor, Tensor]:
        """Per-clip linear weights ``(B, out, in)`` and biases ``(B, out)`` for style codes ``(B, C)``."""
        att = self.attention(style)  # (B, K)
        k, out_dim, in_dim = self.weight.shape[:3]
        weight = (att @ self.weight.reshape(k, -1)).view(-1, out_dim, in_dim)
        bias = att @ self.bias
        return weight, bias


class DynamicLinear(nn.Module):
    """Linear layer whose weights are a style-dependent mixture of K experts ("style-aware adaptation")."""

    def __init__(
        self, in_dim: int, out_dim: int, d_style: int, k: int, ratio: int, temperature: float
    ) -> None:
        super().__init__()
        self.dynamic_conv = DynamicWeights(in_dim, out_dim, d_style, k, ratio, temperature)

    def forward(self, x: Tensor, style: Tensor, mixed: MixedWeights | None = None) -> Tensor:
        """x ``(B, M, in)`` (all tokens of all windows of clip b), style ``(B, C)`` -> ``(B, M, out)``.

        ``mixed`` = ``dynamic_conv.mix(style)`` computed earlier (see :meth:`StyleTalk.prepare_style`).
        """
        weight, bias = mixed if mixed is not None else self.dynamic_conv.mix(style)
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


class DynamicDecoderLayer(nn.Module):
    """Post-norm decoder layer: self-attention, cross-attention to the content, style-dynamic FFN."""

    def __init__(self, cfg: StyleTalkConfig) -> None:
        super().__init__()
        d, p = cfg.d_model, cfg.dropout
        self.self_attn = MultiheadAttention(d, cfg.nhead, p)
        self.multihead_attn = MultiheadAttention(d, cfg.nhead, p)
        self.linear1 = DynamicLinear(
            d, cfg.dim_feedforward, d, cfg.dynamic_k, cfg.dynamic_ratio, cfg.dynamic_temperature
        )
        self.dropout = nn.Dropout(p)
        self.linear2 = nn.Linear(cfg.dim_feedforward, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.norm3 = nn.LayerNorm(d)
        self.dropout1 = nn.Dropout(p)
        self.dropout2 = nn.Dropout(p)
        self.dropout3 = nn.Dropout(p)
        self.activation = _activation(cfg.activation)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        style: Tensor,
        token: int | None = None,
        mixed: MixedWeights | None = None,
        after_self: Tensor | None = None,
    ) -> Tensor:
        """x, memory ``(B*N, W, C)``; style ``(B, C)``. With ``token`` set only that query position is
        computed (keys/values still use all W tokens) and the result is ``(B*N, 1, C)``. ``after_self``
        ``(B*N, W or 1, C)``: the result of :meth:`self_block` for this ``x``, computed earlier."""
        h = self.self_block(x, token) if after_self is None else after_self
        h = self.norm2(h + self.dropout2(self.multihead_attn(h, memory)))
        bn, w, c = h.shape
        b = style.shape[0]
        f = self.linear1(h.reshape(b, (bn // b) * w, c), style, mixed)  # (B, N*W, ffn): one mix per clip
        f = self.linear2(self.dropout(self.activation(f))).reshape(bn, w, c)
        return self.norm3(h + self.dropout3(f))

    def self_block(self, x: Tensor, token: int | None = None) -> Tensor:
        """The self-attention sub-block: ``(B, W, C)`` -> ``(B, W, C)``, or ``(B, 1, C)`` with ``token``."""
        q = x if token is None else x[:, token : token + 1]
        return self.norm1(q + self.dropout1(self.self_attn(q, x)))


class DynamicDecoder(nn.Module):
    """One decoder stack (official ``upper_decoder`` / ``lower_decoder``) with its final LayerNorm."""

    def __init__(self, cfg: StyleTalkConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DynamicDecoderLayer(cfg) for _ in range(cfg.num_decoder_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        for p in self.parameters():  # reference initialisation (xavier on every >1-D tensor of the stack)
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def mix(self, style: Tensor) -> list[MixedWeights]:
        """Every layer's style-mixed FFN weights for style codes ``(B, C)``."""
        return [layer.linear1.dynamic_conv.mix(style) for layer in self.layers]

    def first_self(self, query: Tensor, token: int) -> Tensor | None:
        """The first layer's self-attention block for a query ``(B, W, C)`` (None without layers)."""
        if not self.layers:
            return None
        return self.layers[0].self_block(query, token if len(self.layers) == 1 else None)

    def forward(
        self,
        query: Tensor,
        memory: Tensor,
        style: Tensor,
        token: int,
        mixed: list[MixedWeights] | None = None,
        first: Tensor | None = None,
    ) -> Tensor:
        """query/memory ``(B*N, W, C)`` -> features of window position ``token``: ``(B*N, C)``.

        ``first``: :meth:`first_self` of ``query``, computed earlier (``(B*N, W', C)``)."""
        x = query
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x, memory, style, token if i == last else None, None if mixed is None else mixed[i],
                      first if i == 0 else None)
        if last < 0:  # zero layers: nothing mixes tokens, just pick the position
            x = x[:, token : token + 1]
        return self.norm(x[:, 0])


# ------------------------------------------------------------------------------------------------ networks
class ContentEncoder(nn.Module):
    """Phoneme windows ``(B, N, W)`` int64 -> per-token content features ``(B, N, W, C)``."""

    def __init__(self, cfg: StyleTalkConfig) -> None:
        super().__init__()
        self.window_length = cfg.window_length
        self.encoder = TransformerEncoder(cfg, cfg.num_content_layers)
        self.pos_embed = PositionalEncoding(cfg.d_model, cfg.content_pos_embed_len)
        self.ph_embedding = nn.Embedding(cfg.num_phonemes, cfg.ph_embed_dim)
        self.increase_embed_dim = nn.Linear(cfg.ph_embed_dim, cfg.d_model)

    def forward(self, windows: Tensor) -> Tensor:
        if windows.dim() != 3 or windows.shape[-1] != self.window_length:
            raise ValueError(
                f"phoneme windows must be (B, N, {self.window_length}), got {tuple(windows.shape)}"
            )
        if windows.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"phoneme windows must be int64, got {windows.dtype}")
        b, n, w = windows.shape
        x = self.increase_embed_dim(self.ph_embedding(windows))  # (B, N, W, C)
        x = self.encoder(x.reshape(b * n, w, -1), self.pos_embed(w))  # (B*N, W, C)
        return x.reshape(b, n, w, -1)


class SelfAttentionPooling(nn.Module):
    """Score each frame with Linear -> Mish -> Linear(->1); softmax over time; weighted sum of frames."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.W = nn.Sequential(nn.Linear(d_model, d_model), nn.Mish(), nn.Linear(d_model, 1))

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        logits = self.W(x).squeeze(-1)  # (B, L)
        if pad_mask is not None:
            logits = logits + pad_mask.to(x.dtype) * -100000.0  # reference: additive, not -inf
        weights = torch.softmax(logits, dim=-1).unsqueeze(-1)  # (B, L, 1)
        return (x * weights).sum(dim=1)  # (B, C)


class StyleEncoder(nn.Module):
    """Expression clip ``(B, L, 64)`` (+ pad mask ``(B, L)``, True = padded) -> style code ``(B, C)``."""

    def __init__(self, cfg: StyleTalkConfig) -> None:
        super().__init__()
        self.max_len = cfg.style_pos_embed_len
        self.input_dim = cfg.face3d_dim
        self.encoder = TransformerEncoder(cfg, cfg.num_style_layers)
        self.pos_embed = PositionalEncoding(cfg.d_model, cfg.style_pos_embed_len)
        self.increase_embed_dim = nn.Linear(cfg.face3d_dim, cfg.d_model)
        self.aggregate_method = (
            SelfAttentionPooling(cfg.d_model) if cfg.aggregate_method == "self_attention_pooling" else None
        )

    def forward(self, clip: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        if clip.dim() != 3 or clip.shape[-1] != self.input_dim or not 1 <= clip.shape[1] <= self.max_len:
            raise ValueError(
                f"style clip must be (B, 1..{self.max_len}, {self.input_dim}), got {tuple(clip.shape)}"
            )
        if pad_mask is not None:
            if pad_mask.shape != clip.shape[:2]:
                raise ValueError(f"pad_mask must be {tuple(clip.shape[:2])}, got {tuple(pad_mask.shape)}")
            pad_mask = pad_mask.to(torch.bool)
        x = self.increase_embed_dim(clip)  # (B, L, C)
        x = self.encoder(x, self.pos_embed(x.shape[1]), pad_mask)
        if self.aggregate_method is not None:
            return self.aggregate_method(x, pad_mask)
        if pad_mask is None:
            return x.mean(dim=1)
        valid = (~pad_mask).sum(dim=1, keepdim=True).to(x.dtype)  # (B, 1)
        return x.masked_fill(pad_mask.unsqueeze(-1), 0.0).sum(dim=1) / valid


def _per_window(t: Tensor | None, n: int) -> Tensor | None:
    """A per-clip tensor ``(B, W', C)`` repeated for the N windows of each clip: ``(B*N, W', C)``."""
    return None if t is None else t.unsqueeze(1).expand(t.shape[0], n, *t.shape[1:]).reshape(-1, *t.shape[1:])


class StyleDecoder(nn.Module):
    """Content ``(B, N, W, C)`` + style code ``(B, C)`` -> expression ``(B, N, face3d_dim)``.

    Official ``DisentangleDecoder`` with ``DynamicFCDecoder`` stacks: separate upper- and lower-face decoders
    see the same inputs; each decodes the middle token of every window through its tail MLP.
    """

    def __init__(self, cfg: StyleTalkConfig) -> None:
        super().__init__()
        d, hidden = cfg.d_model, cfg.d_model // 2
        self.upper_face3d_indices = cfg.upper_face3d_indices
        self.lower_face3d_indices = cfg.lower_face3d_indices
        self.upper_decoder = DynamicDecoder(cfg)
        self.lower_decoder = DynamicDecoder(cfg)
        self.pos_embed = PositionalEncoding(d, cfg.decoder_pos_embed_len)
        self.window_length = cfg.window_length

        def tail(n_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Linear(d, hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
                nn.Linear(hidden, n_out),
            )

        self.upper_tail_fc = tail(len(cfg.upper_face3d_indices))
        self.lower_tail_fc = tail(len(cfg.lower_face3d_indices))
        # concat(upper, lower)[..., gather] puts every value at its configured coefficient index
        order = torch.tensor(cfg.upper_face3d_indices + cfg.lower_face3d_indices)
        self.register_buffer("_gather", torch.argsort(order), persistent=False)
        self.style_residual: nn.Linear | None = None
        if cfg.style_residual:
            self.style_residual = nn.Linear(d, cfg.face3d_dim)
            nn.init.zeros_(self.style_residual.weight)
            nn.init.zeros_(self.style_residual.bias)

    def prepare(self, style: Tensor) -> PreparedStyle:
        """Mix the style-dependent weights of both stacks once for style codes ``(B, C)``."""
        if style.dim() != 2:
            raise ValueError(f"style must be (B, C), got {tuple(style.shape)}")
        query = self._query(style, 1, self.window_length)  # (B, W, C): the same for every window
        token = self.window_length // 2
        return PreparedStyle(
            style, self.upper_decoder.mix(style), self.lower_decoder.mix(style),
            self.upper_decoder.first_self(query, token), self.lower_decoder.first_self(query, token),
        )

    def _query(self, style: Tensor, n: int, w: int) -> Tensor:
        """The decoder's query: zeros + positions + style code on every token of every window ``(B*N, W, C)``."""
        b, c = style.shape
        return (self.pos_embed(w).unsqueeze(0) + style.view(b, 1, 1, c)).expand(b, n, w, c).reshape(b * n, w, c)

    def forward(self, content: Tensor, style: Tensor | PreparedStyle) -> Tensor:
        prepared = style if isinstance(style, PreparedStyle) else None
        if prepared is not None:
            style = prepared.code
        if content.dim() != 4 or style.dim() != 2 or style.shape[0] != content.shape[0]:
            raise ValueError(
                f"decode expects content (B, N, W, C) and style (B, C), got "
                f"{tuple(content.shape)} and {tuple(style.shape)}"
            )
        b, n, w, c = content.shape
        memory = content.reshape(b * n, w, c)
        query = self._query(style, n, w)  # (B*N, W, C)
        token = w // 2
        up_mix, low_mix, up_first, low_first = None, None, None, None
        if prepared is not None:
            up_mix, low_mix = prepared.upper, prepared.lower
            if w == self.window_length:  # the precomputed first blocks are per window position
                up_first, low_first = _per_window(prepared.upper_first, n), _per_window(prepared.lower_first, n)
        upper = self.upper_tail_fc(self.upper_decoder(query, memory, style, token, up_mix, up_first))  # (B*N, 51)
        lower = self.lower_tail_fc(self.lower_decoder(query, memory, style, token, low_mix, low_first))  # (B*N, 13)
        out = torch.cat([upper, lower], dim=-1)[:, self._gather].reshape(b, n, -1)  # (B, N, 64)
        if self.style_residual is not None:
            out = out + self.style_residual(style).unsqueeze(1)  # (B, 1, 64): the style's static pose
        return out


class StyleTalk(nn.Module):
    """The full expression generator; ``state_dict()`` keys equal the official ``model_state_dict``'s."""

    def __init__(self, cfg: StyleTalkConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or StyleTalkConfig()
        self.content_encoder = ContentEncoder(self.cfg)
        self.style_encoder = StyleEncoder(self.cfg)
        self.decoder = StyleDecoder(self.cfg)

    def encode_content(self, windows: Tensor) -> Tensor:
        """Phoneme windows ``(B, N, 11)`` int64 -> content ``(B, N, 11, C)``."""
        return self.content_encoder(windows)

    def encode_style(self, clip: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        """Expression clip ``(B, 256, 64)`` and pad mask ``(B, 256)`` (True = padded) -> style ``(B, C)``."""
        return self.style_encoder(clip, pad_mask)

    def decode(self, content: Tensor, style: Tensor | PreparedStyle) -> Tensor:
        """Content ``(B, N, 11, C)`` and style ``(B, C)`` -> expression ``(B, N, 64)``; any B, N >= 1.

        ``style`` may also be :meth:`prepare_style`'s result (same output, skips re-mixing the weights).
        """
        return self.decoder(content, style)

    def prepare_style(self, style: Tensor) -> PreparedStyle:
        """Pre-mix the decoder's style-dependent FFN weights for style codes ``(B, C)``.

        The mixing reads all K=8 expert matrices of all 6 decoder layers (~50 MB for the full model) on every
        ``decode`` call; a streaming session with a fixed style can do it once. Recompute after the weights
        change (training) or when the style changes.
        """
        return self.decoder.prepare(style)

    def forward(self, windows: Tensor, clip: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        return self.decode(self.encode_content(windows), self.encode_style(clip, pad_mask))

    # ------------------------------------------------------------------------------------------ loading
    def load_official_state_dict(self, state_dict: dict[str, Tensor], source: str = "") -> None:
        """Strictly load an official ``model_state_dict`` (prefixes content_encoder./style_encoder./decoder.).

        As in the reference loader, entries under other prefixes are ignored (with a warning); within the
        three sub-modules every name and shape must match, else :class:`CheckpointError` lists all problems.
        """
        groups, other = split_prefixed(state_dict, SUBMODULES)
        if other:
            warnings.warn(
                f"ignoring {len(other)} checkpoint entries outside {SUBMODULES}: {other[:5]}", stacklevel=2
            )
        problems = []
        for name in SUBMODULES:
            try:
                load_state_dict_strict(getattr(self, name), groups[name], source=source)
            except CheckpointError as exc:
                problems.append(f"{name}: {exc}")
        if problems:
            raise CheckpointError("\n".join(problems))

    @classmethod
    def from_official(cls, path: str | os.PathLike[str], cfg: StyleTalkConfig | None = None) -> StyleTalk:
        """Build (default: full config) and strictly load ``checkpoint["model_state_dict"]``; eval mode."""
        state = load_official_state_dict(path, "model_state_dict")  # read first: fail before building
        model = cls(cfg)
        model.load_official_state_dict(state, source=str(path))
        return model.eval()

    def save(
        self, path: str | os.PathLike[str], half: bool = False, extra: dict[str, Any] | None = None
    ) -> None:
        """Write the own checkpoint format (config + weights; optionally float16 storage)."""
        save_checkpoint(path, CHECKPOINT_KIND, self.cfg.to_dict(), self.state_dict(), half=half, extra=extra)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str]) -> StyleTalk:
        """Load a file written by :meth:`save` (config from the file; float32; eval mode)."""
        ckpt = load_checkpoint(path)
        if ckpt.kind != CHECKPOINT_KIND:
            raise CheckpointError(f"{path} holds a {ckpt.kind!r} checkpoint, not {CHECKPOINT_KIND!r}")
        model = cls(StyleTalkConfig.from_dict(ckpt.config))
        load_state_dict_strict(model, ckpt.state_dict, source=str(path))
        return model.eval()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], cfg: StyleTalkConfig | None = None) -> StyleTalk:
        """Own format or official checkpoint, whichever ``path`` is (``cfg`` is for official files only)."""
        try:
            return cls.from_checkpoint(path)
        except CheckpointError as own_error:
            try:
                return cls.from_official(path, cfg)
            except CheckpointError as official_error:
                raise CheckpointError(
                    f"{path} is neither an own checkpoint ({own_error}) nor a loadable official one "
                    f"({official_error})"
                ) from official_error
