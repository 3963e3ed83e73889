"""PIRenderer ``FaceGenerator`` (mapping → warping → editing), state-dict compatible with the official
``net_G_ema`` and computing the same function as the reference code (parity: ``tests/test_pirenderer_parity.py``).

Data flow for one frame (B = batch, D = descriptor_nc, H×W = image size, a multiple of 32)::

    driving window [B, 73, 27] ──MappingNet──▶ descriptor [B, D, 1]
    source [B, 3, H, W] ─┬─WarpingNet(descriptor)─▶ flow [B, 2, H/4, W/4] ─▶ warp_image [B, 3, H, W]
                         └────────────────EditingNet(source, warp_image, descriptor)──▶ fake_image [B, 3, H, W]

Everything after the mapping net is conditioned on the descriptor through AdaIN, so very little of the
per-frame work depends on the source image alone. :meth:`FaceGenerator.encode_source` caches exactly the
descriptor-free parts: the warping hourglass' 7×7 input convolution of the source, and the source half of the
editing encoder's first 7×7 convolution (it is linear over the channel concat, so it splits into a source
term and a warp term). Measured (``benchmarks/pirenderer.py``, full config at 256²): that is 1.85 of 101.4
GFLOP per frame, under 2 % — the renderer's cost is inherently per frame.

Reference quirks kept on purpose (see the fixtures README): the editing decoder's residual blocks compute a
conv1/norm1/activation branch and throw it away — the output is ``x + AdaIN(conv2(x))``. The parameters exist
(so checkpoints load) but we do not evaluate the dead branch unless ``compute_discarded_branch`` is set
(used only to benchmark the reference cost; the output is identical either way). Skipping it saves 21.7 of
the reference's 123.2 GFLOP per frame (18 %).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
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
)

__all__ = [
    "RendererConfig",
    "CommonConfig",
    "MappingNetConfig",
    "WarpingNetConfig",
    "EditingNetConfig",
    "MappingNet",
    "WarpingNet",
    "EditingNet",
    "FaceGenerator",
    "SourceCache",
    "CHECKPOINT_KIND",
    "WINDOW_RADIUS",
    "DRIVING_DIM",
    "driving_windows",
    "image_to_tensor",
    "tensor_to_image",
    "set_compute_discarded_branch",
]

WINDOW_RADIUS = 13  # semantic radius of the driving window: frames t-13 … t+13 (27 frames)
DRIVING_DIM = 73  # 64 expression + 9 pose (3 angles, 3 translation, 3 crop)
_ADAIN_HIDDEN = 128  # fixed in the reference AdaIN, not part of the config
_LEAKY = 0.1
CHECKPOINT_KIND = "pirenderer"  # ``kind`` of our own checkpoint format


# ----------------------------------------------------------------------------------------------- config


@dataclass
class CommonConfig:
    descriptor_nc: int = 256
    image_nc: int = 3
    max_nc: int = 256
    use_spect: bool = False


@dataclass
class MappingNetConfig:
    coeff_nc: int = DRIVING_DIM
    descriptor_nc: int = 256
    layer: int = 3


@dataclass
class WarpingNetConfig:
    base_nc: int = 32
    decoder_layer: int = 3
    encoder_layer: int = 5


@dataclass
class EditingNetConfig:
    base_nc: int = 64
    layer: int = 3
    num_res_blocks: int = 2


_SECTIONS: dict[str, type] = {
    "common": CommonConfig,
    "editing_net": EditingNetConfig,
    "mapping_net": MappingNetConfig,
    "warpping_net": WarpingNetConfig,  # sic: the official spelling, kept so configs round-trip
}


@dataclass
class RendererConfig:
    """The official ``gen`` section of PIRender's config (defaults = the released full model).

    ``to_dict()`` gives the same nested dict as ``renderer_keys.json["config"]``; ``from_dict`` accepts it
    (and rejects unknown keys, which usually mean a typo that would otherwise silently use a default).
    """

    common: CommonConfig = field(default_factory=CommonConfig)
    editing_net: EditingNetConfig = field(default_factory=EditingNetConfig)
    mapping_net: MappingNetConfig = field(default_factory=MappingNetConfig)
    warpping_net: WarpingNetConfig = field(default_factory=WarpingNetConfig)

    def __post_init__(self) -> None:
        if self.mapping_net.descriptor_nc != self.common.descriptor_nc:
            # The AdaIN MLPs read the flattened mapping-net output, so the two must agree.
            raise ValueError(
                f"mapping_net.descriptor_nc ({self.mapping_net.descriptor_nc}) must equal "
                f"common.descriptor_nc ({self.common.descriptor_nc})"
            )
        if self.common.use_spect:
            raise ValueError("use_spect=True (spectral norm) is not supported: no released renderer uses it")
        if self.warpping_net.decoder_layer > self.warpping_net.encoder_layer:
            raise ValueError("warpping_net.decoder_layer must not exceed encoder_layer")

    @property
    def min_image_multiple(self) -> int:
        """Image sides must be multiples of this (stride-2 stages of the warping encoder)."""
        return 2 ** max(self.warpping_net.encoder_layer, self.editing_net.layer)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: asdict(getattr(self, name)) for name in _SECTIONS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RendererConfig:
        unknown = set(d) - set(_SECTIONS)
        if unknown:
            raise ValueError(f"unknown renderer config sections: {sorted(unknown)} (expected {sorted(_SECTIONS)})")
        sections: dict[str, Any] = {}
        for name, typ in _SECTIONS.items():
            sub = dict(d.get(name, {}))
            allowed = {f.name for f in fields(typ)}
            bad = set(sub) - allowed
            if bad:
                raise ValueError(f"unknown keys in renderer config [{name}]: {sorted(bad)} (allowed {sorted(allowed)})")
            sections[name] = typ(**sub)
        return cls(**sections)


# ----------------------------------------------------------------------------------------- building blocks


def _act() -> nn.LeakyReLU:
    return nn.LeakyReLU(_LEAKY)


class LayerNorm2d(nn.Module):
    """Layer norm over (C, H, W) of each sample with a per-channel affine stored as (C, 1, 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape[1:]
        return F.layer_norm(x, shape, self.weight.expand(shape), self.bias.expand(shape))


class AdaIN(nn.Module):
    """Instance norm (no affine) modulated by the descriptor: x̂·(1 + γ(z)) + β(z)."""

    def __init__(self, channels: int, descriptor_nc: int) -> None:
        super().__init__()
        self.mlp_shared = nn.Sequential(nn.Linear(descriptor_nc, _ADAIN_HIDDEN), nn.ReLU())
        self.mlp_gamma = nn.Linear(_ADAIN_HIDDEN, channels)
        self.mlp_beta = nn.Linear(_ADAIN_HIDDEN, channels)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        h = self.mlp_shared(z.flatten(1))  # z [B, D, 1] -> [B, 128]
        gamma = self.mlp_gamma(h)[:, :, None, None]  # [B, C, 1, 1]
        beta = self.mlp_beta(h)[:, :, None, None]
        return F.instance_norm(x, eps=1e-5) * (1 + gamma) + beta


# -------------------------------------------------------------------------------------------- mapping net


class MappingNet(nn.Module):
    """Temporal conv net: driving window [B, coeff_nc, 27] → descriptor [B, descriptor_nc, 1].

    27 → 21 (k7) → 15 → 9 → 3 (k3, dilation 3, residual cropped by 3 each side) → mean over time.
    """

    def __init__(self, coeff_nc: int, descriptor_nc: int, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.first = nn.Sequential(nn.Conv1d(coeff_nc, descriptor_nc, kernel_size=7))
        for i in range(layer):
            block = nn.Sequential(_act(), nn.Conv1d(descriptor_nc, descriptor_nc, kernel_size=3, dilation=3))
            self.add_module(f"encoder{i}", block)

    def forward(self, windows: Tensor) -> Tensor:
        out = self.first(windows)
        for i in range(self.layer):
            out = getattr(self, f"encoder{i}")(out) + out[:, :, 3:-3]
        return out.mean(dim=2, keepdim=True)


# -------------------------------------------------------------------------------------------- warping net


class _AdaINDown(nn.Module):
    """Pre-activation down block: AdaIN → act → 4×4/2 conv → AdaIN → act → 3×3 conv."""

    def __init__(self, cin: int, cout: int, descriptor_nc: int) -> None:
        super().__init__()
        self.conv_0 = nn.Conv2d(cin, cout, kernel_size=4, stride=2, padding=1)
        self.conv_1 = nn.Conv2d(cout, cout, kernel_size=3, padding=1)
        self.norm_0 = AdaIN(cin, descriptor_nc)
        self.norm_1 = AdaIN(cout, descriptor_nc)
        self.actvn = _act()

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        x = self.conv_0(self.actvn(self.norm_0(x, z)))  # [B, cout, H/2, W/2]
        return self.conv_1(self.actvn(self.norm_1(x, z)))


class _AdaINUp(nn.Module):
    """Pre-activation residual up block with 3×3 stride-2 transposed convs on both branches."""

    def __init__(self, cin: int, cout: int, descriptor_nc: int) -> None:
        super().__init__()
        up = {"kernel_size": 3, "stride": 2, "padding": 1, "output_padding": 1}
        self.conv_0 = nn.Conv2d(cin, cout, kernel_size=3, padding=1)
        self.conv_1 = nn.ConvTranspose2d(cout, cout, **up)
        self.conv_s = nn.ConvTranspose2d(cin, cout, **up)
        self.norm_0 = AdaIN(cin, descriptor_nc)
        self.norm_1 = AdaIN(cout, descriptor_nc)
        self.norm_s = AdaIN(cin, descriptor_nc)
        self.actvn = _act()

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        shortcut = self.conv_s(self.actvn(self.norm_s(x, z)))  # [B, cout, 2H, 2W]
        dx = self.conv_0(self.actvn(self.norm_0(x, z)))
        dx = self.conv_1(self.actvn(self.norm_1(dx, z)))
        return shortcut + dx


class _HourglassEncoder(nn.Module):
    def __init__(self, image_nc: int, descriptor_nc: int, base_nc: int, max_nc: int, layers: int) -> None:
        super().__init__()
        self.layers = layers
        self.input_layer = nn.Conv2d(image_nc, base_nc, kernel_size=7, padding=3)
        for i in range(layers):
            cin = min(base_nc * 2**i, max_nc)
            cout = min(base_nc * 2 ** (i + 1), max_nc)
            self.add_module(f"encoder{i}", _AdaINDown(cin, cout, descriptor_nc))

    def forward_from_stem(self, stem: Tensor, z: Tensor) -> list[Tensor]:
        """Encoder features [stem, e0, …, e_{L-1}] given the (descriptor-free) input-layer output."""
        feats = [stem]
        out = stem
        for i in range(self.layers):
            out = getattr(self, f"encoder{i}")(out, z)  # halves H, W
            feats.append(out)
        return feats


class _HourglassDecoder(nn.Module):
    def __init__(self, descriptor_nc: int, base_nc: int, max_nc: int, enc_layers: int, dec_layers: int) -> None:
        super().__init__()
        self.levels = list(range(enc_layers - dec_layers, enc_layers))[::-1]
        cout = 0
        for i in self.levels:
            cin = min(base_nc * 2 ** (i + 1), max_nc)
            if i != enc_layers - 1:
                cin *= 2  # the previous level's output is concatenated with an encoder skip
            cout = min(base_nc * 2**i, max_nc)
            self.add_module(f"decoder{i}", _AdaINUp(cin, cout, descriptor_nc))
        self.output_nc = 2 * cout

    def forward(self, feats: list[Tensor], z: Tensor) -> Tensor:
        skips = list(feats)
        out = skips.pop()  # deepest feature
        for i in self.levels:
            out = getattr(self, f"decoder{i}")(out, z)  # doubles H, W
            out = torch.cat([out, skips.pop()], dim=1)
        return out


class _Hourglass(nn.Module):
    def __init__(self, image_nc: int, descriptor_nc: int, base_nc: int, max_nc: int, enc: int, dec: int) -> None:
        super().__init__()
        self.encoder = _HourglassEncoder(image_nc, descriptor_nc, base_nc, max_nc, enc)
        self.decoder = _HourglassDecoder(descriptor_nc, base_nc, max_nc, enc, dec)
        self.output_nc = self.decoder.output_nc


def _base_grid(h: int, w: int, like: Tensor) -> Tensor:
    """Sampling grid in [-1, 1] (x, y), spacing 2/(size-1): [H, W, 2]."""
    x = 2 * (torch.arange(w, device=like.device, dtype=like.dtype) / (w - 1)) - 1
    y = 2 * (torch.arange(h, device=like.device, dtype=like.dtype) / (h - 1)) - 1
    return torch.stack([x.view(1, w).expand(h, w), y.view(h, 1).expand(h, w)], dim=2)


def flow_to_deformation(flow: Tensor) -> Tensor:
    """Flow in pixels of the flow map [B, 2, h, w] → absolute sampling grid [B, h, w, 2] in [-1, 1]."""
    _, _, h, w = flow.shape
    scale = flow.new_tensor([w - 1, h - 1]).view(1, 2, 1, 1)
    offset = 2 * (flow / scale)
    return _base_grid(h, w, flow).unsqueeze(0) + offset.permute(0, 2, 3, 1)


def warp_image(image: Tensor, deformation: Tensor) -> Tensor:
    """Backward-warp ``image`` [B, C, H, W] with a grid [B, h, w, 2], upsampled bilinearly to H×W if needed."""
    _, h, w, _ = deformation.shape
    size = image.shape[2:]
    if (h, w) != tuple(size):
        deformation = F.interpolate(deformation.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False)
        deformation = deformation.permute(0, 2, 3, 1)
    return F.grid_sample(image, deformation, mode="bilinear", padding_mode="zeros", align_corners=False)


class WarpingNet(nn.Module):
    """AdaIN hourglass over the source image → flow at 1/4 resolution → warped source."""

    def __init__(
        self,
        image_nc: int,
        descriptor_nc: int,
        base_nc: int,
        max_nc: int,
        encoder_layer: int,
        decoder_layer: int,
    ) -> None:
        super().__init__()
        self.hourglass = _Hourglass(image_nc, descriptor_nc, base_nc, max_nc, encoder_layer, decoder_layer)
        c = self.hourglass.output_nc
        self.flow_out = nn.Sequential(LayerNorm2d(c), _act(), nn.Conv2d(c, 2, kernel_size=7, padding=3))

    def stem(self, image: Tensor) -> Tensor:
        """The only descriptor-free part: the hourglass input conv, [B, base_nc, H, W]."""
        return self.hourglass.encoder.input_layer(image)

    def forward_from_stem(self, image: Tensor, stem: Tensor, z: Tensor) -> dict[str, Tensor]:
        feats = self.hourglass.encoder.forward_from_stem(stem, z)
        flow = self.flow_out(self.hourglass.decoder(feats, z))  # [B, 2, H/4, W/4] in flow-map pixels
        # ``image`` may be a single cached source broadcast over the batch.
        src = image.expand(flow.shape[0], -1, -1, -1)
        return {"flow_field": flow, "warp_image": warp_image(src, flow_to_deformation(flow))}

    def forward(self, image: Tensor, z: Tensor) -> dict[str, Tensor]:
        return self.forward_from_stem(image, self.stem(image), z)


# -------------------------------------------------------------------------------------------- editing net


class _ConvNormAct(nn.Module):
    """conv → LayerNorm2d → LeakyReLU (→ 2×2 average pool), stored as ``model.{0,1,…}``."""

    def __init__(self, cin: int, cout: int, kernel: int, pool: bool = False) -> None:
        super().__init__()
        conv = nn.Conv2d(cin, cout, kernel_size=kernel, padding=kernel // 2)
        layers: list[nn.Module] = [conv, LayerNorm2d(cout), _act()]
        if pool:
            layers.append(nn.AvgPool2d(kernel_size=2))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class _UpBlock(_ConvNormAct):
    """Nearest ×2 upsampling then conv → LayerNorm2d → LeakyReLU."""

    def forward(self, x: Tensor) -> Tensor:
        return self.model(F.interpolate(x, scale_factor=2, mode="nearest"))


class _FinalBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Conv2d(cin, cout, kernel_size=7, padding=3), nn.Tanh())

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class _EditResBlock(nn.Module):
    """Reference quirk: output = x + AdaIN(conv2(x)); the conv1/norm1/act branch is computed and discarded.

    We skip the dead branch (identical output, ~1/5 less editing-net compute at 256²) unless
    ``compute_discarded_branch`` is True, which reproduces the reference *cost* for benchmarks.
    """

    compute_discarded_branch: bool = False

    def __init__(self, channels: int, descriptor_nc: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.norm1 = AdaIN(channels, descriptor_nc)
        self.norm2 = AdaIN(channels, descriptor_nc)
        self.actvn = _act()

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        if self.compute_discarded_branch:
            self.actvn(self.norm1(self.conv1(x), z))  # result unused, exactly as in the reference
        return x + self.norm2(self.conv2(x), z)


class _EditResBlocks(nn.Module):
    def __init__(self, n: int, channels: int, descriptor_nc: int) -> None:
        super().__init__()
        self.n = n
        for i in range(n):
            self.add_module(f"res{i}", _EditResBlock(channels, descriptor_nc))

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        for i in range(self.n):
            x = getattr(self, f"res{i}")(x, z)
        return x


class _EditEncoder(nn.Module):
    def __init__(self, image_nc: int, base_nc: int, max_nc: int, layers: int) -> None:
        super().__init__()
        self.layers = layers
        self.first = _ConvNormAct(image_nc, base_nc, 7)
        for i in range(layers):
            cin = min(base_nc * 2**i, max_nc)
            cout = min(base_nc * 2 ** (i + 1), max_nc)
            self.add_module(f"down{i}", _ConvNormAct(cin, cout, 3, pool=True))

    def forward_from_first_conv(self, conv_out: Tensor) -> list[Tensor]:
        """Features [f0, …, f_L] given the raw (pre-norm) output of the first 7×7 conv."""
        x = self.first.model[2](self.first.model[1](conv_out))
        feats = [x]
        for i in range(self.layers):
            x = getattr(self, f"down{i}")(x)  # halves H, W
            feats.append(x)
        return feats


class _EditDecoder(nn.Module):
    def __init__(self, image_nc: int, descriptor_nc: int, base_nc: int, max_nc: int, layers: int, nres: int) -> None:
        super().__init__()
        self.layers = layers
        cout = base_nc
        for i in reversed(range(layers)):
            cin = min(base_nc * 2 ** (i + 1), max_nc)
            cout = min(base_nc * 2**i, max_nc)
            self.add_module(f"up{i}", _UpBlock(cin, cout, 3))
            self.add_module(f"res{i}", _EditResBlocks(nres, cin, descriptor_nc))
            self.add_module(f"jump{i}", _ConvNormAct(cout, cout, 3))
        self.final = _FinalBlock(cout, image_nc)

    def forward(self, feats: list[Tensor], z: Tensor) -> Tensor:
        skips = list(feats)
        out = skips.pop()
        for i in reversed(range(self.layers)):
            out = getattr(self, f"res{i}")(out, z)
            out = getattr(self, f"up{i}")(out)  # doubles H, W
            out = getattr(self, f"jump{i}")(skips.pop()) + out
        return self.final(out)  # tanh, [B, image_nc, H, W]


class EditingNet(nn.Module):
    """Refines the warped image: encoder over concat(source, warp) + AdaIN decoder → tanh image."""

    def __init__(
        self, image_nc: int, descriptor_nc: int, layer: int, base_nc: int, max_nc: int, num_res_blocks: int
    ) -> None:
        super().__init__()
        self.image_nc = image_nc
        self.encoder = _EditEncoder(2 * image_nc, base_nc, max_nc, layer)
        self.decoder = _EditDecoder(image_nc, descriptor_nc, base_nc, max_nc, layer, num_res_blocks)

    def _first_conv(self) -> nn.Conv2d:
        conv = self.encoder.first.model[0]
        assert isinstance(conv, nn.Conv2d)
        return conv

    def source_term(self, source: Tensor) -> Tensor:
        """Source half of the first conv plus its bias, [B, base_nc, H, W] (cacheable per avatar)."""
        conv = self._first_conv()
        return F.conv2d(source, conv.weight[:, : self.image_nc], conv.bias, padding=conv.padding)

    def forward_cached(self, source_term: Tensor, warp: Tensor, z: Tensor) -> Tensor:
        """Same as ``forward`` with the source half of the first conv precomputed (equal up to rounding)."""
        conv = self._first_conv()
        first = F.conv2d(warp, conv.weight[:, self.image_nc :], None, padding=conv.padding) + source_term
        return self.decoder(self.encoder.forward_from_first_conv(first), z)

    def forward(self, source: Tensor, warp: Tensor, z: Tensor) -> Tensor:
        src = source.expand(warp.shape[0], -1, -1, -1)
        first = self._first_conv()(torch.cat([src, warp], dim=1))  # [B, base_nc, H, W]
        return self.decoder(self.encoder.forward_from_first_conv(first), z)


# ------------------------------------------------------------------------------------------ face generator


@dataclass
class SourceCache:
    """Descriptor-independent work on one source image (batch 1; broadcast over frames)."""

    image: Tensor  # [1, 3, H, W] in [-1, 1]
    warp_stem: Tensor  # [1, warp base_nc, H, W]: hourglass input conv
    edit_source_term: Tensor  # [1, edit base_nc, H, W]: source half of the editing first conv (+ bias)


class FaceGenerator(nn.Module):
    """The official ``FaceGenerator``: sub-modules ``mapping_net``, ``warpping_net`` (sic), ``editing_net``."""

    def __init__(self, cfg: RendererConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or RendererConfig()
        self.cfg = cfg
        c = cfg.common
        self.mapping_net = MappingNet(**asdict(cfg.mapping_net))
        self.warpping_net = WarpingNet(
            c.image_nc, c.descriptor_nc, cfg.warpping_net.base_nc, c.max_nc,
            cfg.warpping_net.encoder_layer, cfg.warpping_net.decoder_layer,
        )  # fmt: skip
        self.editing_net = EditingNet(
            c.image_nc, c.descriptor_nc, cfg.editing_net.layer, cfg.editing_net.base_nc, c.max_nc,
            cfg.editing_net.num_res_blocks,
        )  # fmt: skip

    # -- loading
    @classmethod
    def from_official(
        cls, path: str | os.PathLike[str] | Mapping[str, Tensor], cfg: RendererConfig | None = None
    ) -> FaceGenerator:
        """Build and load ``checkpoint["net_G_ema"]`` strictly (other top-level entries are ignored).

        ``path`` may also be a loaded checkpoint dict or an already extracted ``net_G_ema`` state dict.
        Raises ``CheckpointError`` listing every missing / unexpected key and shape mismatch (the reference
        loads non-strictly, which would silently leave misnamed weights random).
        """
        if isinstance(path, Mapping):
            inner = path.get("net_G_ema")
            state, source = dict(inner if isinstance(inner, Mapping) else path), "state dict"
        else:
            state, source = load_official_state_dict(path, "net_G_ema"), os.fspath(path)
        model = cls(cfg)
        load_state_dict_strict(model, state, source=source)
        return model.eval()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], cfg: RendererConfig | None = None) -> FaceGenerator:
        """Load either our own checkpoint format (kind ``"pirenderer"``, config inside) or an official file.

        ``cfg`` only applies to official files (which carry no config; default = the full model).
        """
        try:
            ck = load_checkpoint(path)
        except CheckpointError as own_err:
            try:
                return cls.from_official(path, cfg)
            except CheckpointError as official_err:
                raise CheckpointError(f"{own_err}; as an official checkpoint: {official_err}") from official_err
        if ck.kind != CHECKPOINT_KIND:
            raise CheckpointError(f"{path} holds a {ck.kind!r} checkpoint, not {CHECKPOINT_KIND!r}")
        model = cls(RendererConfig.from_dict(ck.config))
        load_state_dict_strict(model, ck.state_dict, source=os.fspath(path))
        return model.eval()

    def save(self, path: str | os.PathLike[str], half: bool = False) -> None:
        """Write our own format (config + weights; ``half`` stores float16, ~45 MB for the full model)."""
        save_checkpoint(path, CHECKPOINT_KIND, self.cfg.to_dict(), self.state_dict(), half=half)

    # -- separable steps (streaming)
    def descriptor(self, windows: Tensor) -> Tensor:
        """Driving windows [B, 73, 27] → descriptor [B, D, 1]."""
        return self.mapping_net(windows)

    def encode_source(self, source_image: Tensor) -> SourceCache:
        """Precompute the descriptor-free work for one source image [1, 3, H, W] in [-1, 1]."""
        if source_image.dim() != 4 or source_image.shape[0] != 1:
            raise ValueError(f"encode_source expects one image [1, 3, H, W], got {tuple(source_image.shape)}")
        self._check_size(source_image)
        return SourceCache(
            image=source_image,
            warp_stem=self.warpping_net.stem(source_image),
            edit_source_term=self.editing_net.source_term(source_image),
        )

    def render_cached(self, cache: SourceCache, descriptor: Tensor) -> dict[str, Tensor]:
        """Frames for descriptors [B, D, 1] of one cached source; same keys as ``forward``."""
        out = self.warpping_net.forward_from_stem(cache.image, cache.warp_stem, descriptor)
        out["fake_image"] = self.editing_net.forward_cached(cache.edit_source_term, out["warp_image"], descriptor)
        out["descriptor"] = descriptor
        return out

    def _check_size(self, image: Tensor) -> None:
        m = self.cfg.min_image_multiple
        h, w = image.shape[-2:]
        if h % m or w % m:
            raise ValueError(f"image size {h}x{w} must be a multiple of {m} for this renderer config")

    def forward(self, source_image: Tensor, driving_windows: Tensor) -> dict[str, Tensor]:
        """Reference forward: source [B, 3, H, W] in [-1, 1] (or [1, …] broadcast), windows [B, 73, 27].

        Returns ``fake_image`` (tanh, not clamped), ``warp_image``, ``flow_field`` [B, 2, H/4, W/4] and
        ``descriptor`` [B, D, 1].
        """
        self._check_size(source_image)
        z = self.mapping_net(driving_windows)
        out = self.warpping_net(source_image, z)
        out["fake_image"] = self.editing_net(source_image, out["warp_image"], z)
        out["descriptor"] = z
        return out


def set_compute_discarded_branch(model: nn.Module, enabled: bool) -> None:
    """Evaluate (and discard) the editing res blocks' dead branch, to measure the reference's cost."""
    for m in model.modules():
        if isinstance(m, _EditResBlock):
            m.compute_discarded_branch = enabled


# ------------------------------------------------------------------------------------------------ helpers


def driving_windows(
    seq: Tensor | np.ndarray, frames: Sequence[int] | Tensor | np.ndarray, radius: int = WINDOW_RADIUS
) -> Tensor:
    """Windows [B, C, 2·radius+1] of ``seq`` [T, C] centred on ``frames``; indices clamped to [0, T-1]."""
    s = torch.as_tensor(seq)
    if s.dim() != 2 or s.shape[0] == 0:
        raise ValueError(f"driving sequence must be [T>0, C], got {tuple(s.shape)}")
    centres = torch.as_tensor(frames, dtype=torch.long, device=s.device).reshape(-1, 1)
    offsets = torch.arange(-radius, radius + 1, device=s.device).view(1, -1)
    idx = (centres + offsets).clamp_(0, s.shape[0] - 1)  # [B, 27]
    return s[idx].transpose(1, 2).contiguous()  # [B, 27, C] -> [B, C, 27]


def image_to_tensor(image: np.ndarray | Tensor) -> Tensor:
    """uint8 RGB (H, W, 3) or (B, H, W, 3) → float32 [B, 3, H, W] in [-1, 1] via (x/255 − 0.5)/0.5."""
    t = torch.as_tensor(np.ascontiguousarray(image) if isinstance(image, np.ndarray) else image)
    if t.dtype != torch.uint8:
        raise TypeError(f"expected uint8 image, got {t.dtype}")
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected (H, W, 3) or (B, H, W, 3) RGB, got {tuple(t.shape)}")
    x = t.permute(0, 3, 1, 2).to(torch.float32) / 255.0
    return (x - 0.5) / 0.5


def tensor_to_image(x: Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] → uint8 (B, H, W, 3): clamp, (x+1)/2·255, truncate (as the reference)."""
    y = (x.detach().clamp(-1, 1) + 1) / 2 * 255
    return y.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()
