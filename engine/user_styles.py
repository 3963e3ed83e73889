"""User styles: `styles add NAME (VIDEO | CLIP)`, `styles remove NAME`, `styles` (list built-in and user styles).

A user style is a (T, 64) float32 expression clip stored as ``NAME.npy`` in the styles directory (config key
``style.user_dir``, default ``$XDG_DATA_HOME/styletalk-live/styles``, i.e. ``~/.local/share/...``), with a small
``NAME.json`` saying where it came from. :func:`engine.runtime.build_styles` loads the directory, so a style
added once is available to ``render``, ``speak`` and ``serve`` after a restart.

Why clips and not codes: a code belongs to one set of decoder weights; a clip works with any checkpoint.

Nothing is lost on bad input: a video or clip is fully extracted/validated before anything is written, files
are written to a temporary name and renamed into place, an existing name is only replaced with ``--replace``,
and built-in names cannot be shadowed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.config import Config, StyleConfig, add_config_arguments, config_from_args

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CLIP_SUFFIXES = (".mat", ".npy", ".txt")


class UserStyleError(ValueError):
    """A `styles add/remove` request that cannot be done. ``code``: bad_name, builtin, exists, unknown,
    bad_clip, or one of engine.style_extract.ERROR_CODES for videos."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def default_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "styletalk-live" / "styles"


def styles_dir(style: StyleConfig) -> Path:
    return Path(style.user_dir).expanduser() if style.user_dir else default_dir()


@dataclass(frozen=True)
class UserStyle:
    name: str
    path: Path
    frames: int
    source: str


class UserStyles:
    """The styles directory. ``builtin``: names that user styles may not take (built-in codes, clips_dir)."""

    def __init__(self, root: Path, builtin: frozenset[str] = frozenset()) -> None:
        self.root = Path(root)
        self.builtin = builtin

    def list(self) -> list[UserStyle]:
        out: list[UserStyle] = []
        if not self.root.is_dir():
            return out
        for p in sorted(self.root.glob("*.npy")):
            meta = {}
            side = p.with_suffix(".json")
            if side.is_file():
                try:
                    meta = json.loads(side.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    meta = {}
            out.append(UserStyle(p.stem, p, int(meta.get("frames", 0)), str(meta.get("source", "?"))))
        return out

    def load(self) -> dict[str, np.ndarray]:
        """{name: clip} of every readable user style; unreadable files are logged and skipped (a damaged file
        must not stop the server from starting)."""
        from models.clips import ClipError, load_style_clip

        clips = {}
        for s in self.list():
            try:
                clips[s.name] = load_style_clip(s.path)
            except ClipError as exc:
                log.warning("user style %s skipped: %s", s.name, exc)
        return clips

    def _check_new(self, name: str, replace: bool) -> Path:
        if not NAME_RE.match(name or ""):
            raise UserStyleError("bad_name", f"style name {name!r}: use 1–64 letters, digits, '_', '-' or '.', "
                                 "starting with a letter or digit")
        if name in self.builtin:
            raise UserStyleError("builtin", f"{name!r} is a built-in style; choose another name")
        path = self.root / f"{name}.npy"
        if path.exists() and not replace:
            raise UserStyleError("exists", f"user style {name!r} exists; `styles remove {name}` or --replace")
        return path

    def add_clip(self, name: str, clip: np.ndarray, meta: dict, replace: bool = False) -> UserStyle:
        """Store a validated (T, 64) clip atomically."""
        path = self._check_new(name, replace)
        clip = np.ascontiguousarray(clip, np.float32)
        if clip.ndim != 2 or clip.shape[1] != 64 or len(clip) < 1 or not np.isfinite(clip).all():
            raise UserStyleError("bad_clip", f"style clip must be finite (T, 64), got {clip.shape}")
        self.root.mkdir(parents=True, exist_ok=True)
        meta = {"frames": len(clip), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())} | meta
        tmp_npy = self.root / f".{name}.npy.tmp"
        tmp_json = self.root / f".{name}.json.tmp"
        with open(tmp_npy, "wb") as fh:
            np.save(fh, clip)
        tmp_json.write_text(json.dumps(meta, indent=1), encoding="utf-8")
        os.replace(tmp_json, path.with_suffix(".json"))
        os.replace(tmp_npy, path)
        return UserStyle(name, path, len(clip), str(meta.get("source", "?")))

    def add(self, name: str, source: Path, replace: bool = False, limits=None, progress: bool = False) -> UserStyle:
        """Add from a style clip (.mat/.npy/.txt) or from any video (extracted through the inverse)."""
        from models.clips import ClipError, load_style_clip

        self._check_new(name, replace)  # fail fast, before a long extraction
        source = Path(source)
        if source.suffix.lower() in CLIP_SUFFIXES:
            try:
                clip = load_style_clip(source)
            except ClipError as exc:
                raise UserStyleError("bad_clip", str(exc)) from exc
            return self.add_clip(name, clip, {"source": source.name, "kind": "clip"}, replace)
        from engine.style_extract import ExtractLimits, StyleExtractError, extract_style

        try:
            res = extract_style(source, limits or ExtractLimits(), progress=progress)
        except StyleExtractError as exc:
            raise UserStyleError(exc.code, str(exc)) from exc
        meta = {"source": source.name, "kind": "video", "seconds": round(res.seconds, 2),
                "residual_median": round(float(np.median(res.residual)), 5),
                "interpolated": [list(g) for g in res.interpolated]}
        return self.add_clip(name, res.exp, meta, replace)

    def remove(self, name: str) -> None:
        path = self.root / f"{name}.npy"
        if not NAME_RE.match(name or "") or not path.is_file():
            known = ", ".join(s.name for s in self.list()) or "none"
            raise UserStyleError("unknown", f"no user style {name!r} (user styles: {known})")
        path.unlink()
        path.with_suffix(".json").unlink(missing_ok=True)


def limits_from(style: StyleConfig):
    from engine.style_extract import ExtractLimits

    return ExtractLimits(min_seconds=style.video_min_seconds, max_seconds=style.video_max_seconds,
                         max_pixels=style.video_max_pixels)


def builtin_names(config: Config) -> frozenset[str]:
    """Names user styles may not take: the built-in codes, ``neutral`` and the ``style.clips_dir`` clips."""
    from engine.runtime import BUILTIN_STYLE_CODES
    from models.clips import STYLE_CLIP_SUFFIXES

    names = {"neutral"}
    if BUILTIN_STYLE_CODES.is_file():
        with np.load(BUILTIN_STYLE_CODES, allow_pickle=False) as codes:
            names.update(codes.files)
    if config.style.clips_dir and Path(config.style.clips_dir).is_dir():
        names.update(p.stem for p in Path(config.style.clips_dir).iterdir() if p.suffix.lower() in STYLE_CLIP_SUFFIXES)
    return frozenset(names)


def main(argv: list[str] | None = None) -> int:
    """`styletalk-live styles [add NAME (VIDEO|CLIP) | remove NAME]`: list, add or remove speaking styles."""
    from models.clips import ClipError

    if any(a == "--sheet" or a.startswith("--sheet=") for a in argv or []):
        from engine.style_sheet import main as sheet_main  # `styles --sheet OUT.png`: a picture of every style

        return sheet_main(argv)

    parser = argparse.ArgumentParser(
        prog="styletalk-live styles", description=main.__doc__,
        epilog="User styles live in style.user_dir (default $XDG_DATA_HOME/styletalk-live/styles) and are "
               "available to render, speak and serve by name (--style NAME). `styles --sheet OUT.png` draws every "
               "style on the avatar instead (`styles --sheet x.png --help` lists its options).")
    add_config_arguments(parser, flags=("--checkpoint",))  # built-in codes match the built-in weights only
    sub = parser.add_subparsers(dest="action")
    p_add = sub.add_parser("add", help="add a user style from a video (extracted) or a style clip (.mat/.npy/.txt)")
    p_add.add_argument("name")
    p_add.add_argument("source", type=Path, help="a video of one talking face (2–60 s) or a style clip")
    p_add.add_argument("--replace", action="store_true", help="replace a user style of the same name")
    p_add.add_argument("--no-progress", action="store_true")
    p_rm = sub.add_parser("remove", help="remove a user style")
    p_rm.add_argument("name")
    # an unknown flag before the action would otherwise be reported as "invalid choice" of its value
    known = {o for p in (parser, p_add, p_rm) for a in p._actions for o in a.option_strings}
    for token in argv or []:
        if token.startswith("--") and token.split("=", 1)[0] not in known:
            parser.error(f"unrecognized arguments: {token}")
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except (ValueError, ClipError) as exc:
        print(f"styletalk-live styles: error: {exc}", file=sys.stderr)
        return 2
    store = UserStyles(styles_dir(config.style), builtin_names(config))
    try:
        if args.action == "add":
            s = store.add(args.name, args.source, args.replace, limits_from(config.style),
                          progress=not args.no_progress)
            print(f"added user style {s.name!r} ({s.frames} frames from {s.source}) in {store.root}")
            return 0
        if args.action == "remove":
            store.remove(args.name)
            print(f"removed user style {args.name!r}")
            return 0
    except UserStyleError as exc:
        print(f"styletalk-live styles: error [{exc.code}]: {exc}", file=sys.stderr)
        return 2
    return _list(config, store)


def _list(config: Config, store: UserStyles) -> int:
    from engine.runtime import build_decoder, build_styles

    try:
        bank = build_styles(config, build_decoder(config))
    except (ValueError, RuntimeError) as exc:
        print(f"styletalk-live styles: error: {exc}", file=sys.stderr)
        return 2
    user = {s.name: s for s in store.list()}
    for name in bank.names():
        if name in user:
            print(f"{name}  (user: {user[name].source}, {user[name].frames} frames)")
        else:
            print(f"{name}  (built-in)")
    return 0
