"""Checkpoint I/O: strict loading of official checkpoints and the project's own self-describing format.

Why strict: ``nn.Module.load_state_dict(strict=False)`` (what the reference renderer uses) silently keeps the
random initialisation of any misnamed entry, which shows up much later as a subtly wrong face. Every loader
here checks names *and* shapes and raises :class:`CheckpointError` listing every problem at once.

Own format (``save_checkpoint`` / ``load_checkpoint``): a plain dict that ``torch.load(weights_only=True)``
can read - no pickled classes, so loading an untrusted file cannot execute code::

    {"format": "styletalk-live", "format_version": 1, "kind": str, "config": dict,
     "state_dict": {name: Tensor}, "half_keys": [names stored as float16], "extra": dict}

The config travels with the weights, so a file alone is enough to rebuild the network. With ``half=True``
float32 tensors are stored as float16 (half the size) and restored to float32 on load.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT_NAME = "styletalk-live"
FORMAT_VERSION = 1
_FP16_MAX = 65504.0


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable or does not match the network it is loaded into."""


@dataclass
class Checkpoint:
    """Contents of a checkpoint in the project's own format (tensors on CPU, float32 restored)."""

    kind: str
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    extra: dict[str, Any] = field(default_factory=dict)


def _torch_load(path: str | os.PathLike[str]) -> Any:
    """``torch.load`` restricted to tensors and plain containers, with readable errors."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist or is not a file")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip, non-allowlisted globals ...
        raise CheckpointError(f"cannot read checkpoint {p}: {type(exc).__name__}: {exc}") from exc


def _check_plain(value: Any, where: str) -> None:
    """Reject values that ``weights_only`` loading could not read back (fail at save time, not load time)."""
    if value is None or isinstance(value, bool | int | float | str):
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: dict keys must be str, got {type(k).__name__}")
            _check_plain(v, f"{where}.{k}")
        return
    if isinstance(value, torch.Tensor):
        return
    raise TypeError(
        f"{where}: {type(value).__name__} cannot be stored (use plain str/int/float/bool/list/dict)"
    )


def save_checkpoint(
    path: str | os.PathLike[str],
    kind: str,
    config: dict[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    half: bool = False,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint in the own format (atomically: a crash never leaves a half-written file).

    ``half=True`` stores float32 tensors as float16; tensors with values beyond the float16 range stay
    float32 rather than turning into inf. Other dtypes (float64, integer buffers) are stored unchanged.
    """
    if not isinstance(kind, str) or not kind:
        raise ValueError("kind must be a non-empty string, e.g. 'styletalk'")
    _check_plain(config, "config")
    extra = dict(extra or {})
    _check_plain(extra, "extra")
    tensors: dict[str, torch.Tensor] = {}
    half_keys: list[str] = []
    for name, t in state_dict.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"state_dict[{name!r}] is {type(t).__name__}, not a tensor")
        t = t.detach().to("cpu").contiguous()
        if half and t.dtype == torch.float32 and bool(torch.isfinite(t).all()):
            if t.numel() == 0 or float(t.abs().max()) <= _FP16_MAX:
                t = t.to(torch.float16)
                half_keys.append(name)
        tensors[name] = t.clone()  # own storage: never serialise a view of a larger buffer
    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config": config,
        "state_dict": tensors,
        "half_keys": half_keys,
        "extra": extra,
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        # mkstemp creates 0600; a checkpoint is a shareable artifact: give it the usual umask-based mode
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint in the own format; float16-stored tensors come back as float32."""
    obj = _torch_load(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT_NAME:
        hint = ""
        if isinstance(obj, dict) and ("model_state_dict" in obj or "net_G_ema" in obj):
            hint = " (an official checkpoint: use StyleTalk.from_official / load_official_state_dict)"
        raise CheckpointError(f"{path} is not a {FORMAT_NAME} checkpoint{hint}")
    version = obj.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: unsupported format_version {version!r} (this code reads {FORMAT_VERSION})"
        )
    for key in ("kind", "config", "state_dict"):
        if key not in obj:
            raise CheckpointError(f"{path}: missing entry {key!r}")
    half_keys = set(obj.get("half_keys", []))
    state = {k: (v.to(torch.float32) if k in half_keys else v) for k, v in obj["state_dict"].items()}
    return Checkpoint(kind=obj["kind"], config=obj["config"], state_dict=state, extra=obj.get("extra") or {})


def load_official_state_dict(path: str | os.PathLike[str], key: str) -> dict[str, torch.Tensor]:
    """Return ``checkpoint[key]`` (e.g. ``"model_state_dict"``, ``"net_G_ema"``) of an official file.

    Other top-level entries (optimizer state, epoch counters) are ignored, as by the reference loaders.
    """
    obj = _torch_load(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    if key not in obj:
        raise CheckpointError(f"{path}: no {key!r} entry (top-level keys: {sorted(map(str, obj))})")
    state = obj[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: {key!r} is not a mapping of tensors")
    return dict(state)


def split_prefixed(
    state_dict: Mapping[str, torch.Tensor], prefixes: Iterable[str]
) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """Split ``{"a.x": t, "b.y": u}`` into ``{"a": {"x": t}, "b": {"y": u}}`` + the keys matching no prefix.

    ``prefixes`` are sub-module names without the trailing dot.
    """
    groups: dict[str, dict[str, torch.Tensor]] = {p: {} for p in prefixes}
    other: list[str] = []
    for name, t in state_dict.items():
        head, dot, rest = name.partition(".")
        if dot and head in groups:
            groups[head][rest] = t
        else:
            other.append(name)
    return groups, other


def _list(names: Iterable[str], limit: int = 20) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def load_state_dict_strict(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = ""
) -> None:
    """Load ``state_dict`` into ``module`` requiring exactly the same names and shapes.

    Raises one :class:`CheckpointError` listing all missing keys, unexpected keys and shape mismatches
    (``load_state_dict`` alone reports shape mismatches only after name checks and in a long message).
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_list(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): {_list(shapes)}")
    if problems:
        where = f" from {source}" if source else ""
        raise CheckpointError(f"cannot load {type(module).__name__}{where}: " + "; ".join(problems))
    module.load_state_dict(dict(state_dict), strict=True)
