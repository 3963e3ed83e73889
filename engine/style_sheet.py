"""`styletalk-live styles [--sheet out.png]`: list the speaking styles, or draw what each looks like.

A sheet decodes the *same* phonemes in every style (same frames, same head pose, no idle blinks: only the
style differs) and renders them on the chosen avatar with the configured renderer:

* ``--columns 0`` (default): one tile per style, at one frame of open-mouthed speech, in a grid;
* ``--columns K``: one row per style, K columns = the same K frames spread over the utterance, so the
  static pose (brows, smile, eyes) and the mouth amplitude of each style can be compared along a row and
  down a column.

Phonemes: ``--phonemes FILE.json`` (as for ``render``), else the held-out sample clip ``andrew_clip_2``'s
reference labels when the sample data is present, else a short built-in phrase. ``--intensity`` applies to
every style (e.g. ``--intensity 2`` draws each style exaggerated); ``--intensities 0,1,2 --silence`` draws
each style's silence and speech at several intensities side by side (rows = styles).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from engine.config import MAX_INTENSITY, ConfigError, StyleConfig, add_config_arguments, config_from_args
from engine.contracts import RestAware
from engine.stylebank import renderer_rest
from models.phonemes import PHONEME_INDEX, SIL, phoneme_windows

log = logging.getLogger(__name__)

OPEN_VOWELS = ("AA", "AE", "AH", "AO", "AW", "AY", "EH", "EY", "OW")
SAMPLE_CLIP = "andrew_clip_2"
# "the quick brown fox" at roughly 30 fps: fallback when neither a file nor the sample data exists
_PHRASE = ["SIL"] * 6 + ["DH"] * 3 + ["AH"] * 4 + ["K"] * 3 + ["W"] * 3 + ["IH"] * 4 + ["K"] * 3 + ["B"] * 2 + [
    "R"] * 3 + ["AW"] * 8 + ["N"] * 3 + ["F"] * 3 + ["AA"] * 8 + ["K"] * 2 + ["S"] * 4 + ["SIL"] * 6


class SheetError(ValueError):
    """Bad sheet request (unknown style, unreadable phonemes, nothing to draw)."""


def default_phonemes() -> tuple[np.ndarray, str]:
    from models.dataset import default_data_dir

    path = default_data_dir() / "source" / "phoneme" / f"{SAMPLE_CLIP}_seq.json"
    if path.is_file():
        return np.asarray(json.loads(path.read_text(encoding="utf-8")), np.int64), f"{SAMPLE_CLIP} (sample data)"
    return np.asarray([PHONEME_INDEX[p] for p in _PHRASE], np.int64), "built-in phrase"


def pick_frames(labels: np.ndarray, columns: int) -> np.ndarray:
    """``columns`` frame indices on speech (not silence), evenly spread; for one column an open vowel in the
    middle of a run of open vowels (a mouth that is visibly open)."""
    n = len(labels)
    speech = np.flatnonzero(labels != SIL)
    if speech.size == 0:
        raise SheetError("the phoneme sequence is all silence: nothing to show")
    if columns <= 1:
        vowels = {PHONEME_INDEX[v] for v in OPEN_VOWELS}
        is_open = np.array([int(x) in vowels for x in labels])
        # frames inside open-vowel runs of >= 4, nearest the middle of the clip
        run = np.convolve(is_open.astype(float), np.ones(5), mode="same")
        good = np.flatnonzero(run >= 4.5) if (run >= 4.5).any() else np.flatnonzero(is_open)
        if good.size == 0:
            good = speech
        return np.array([int(good[np.argmin(np.abs(good - n // 2))])])
    idx = np.linspace(0, speech.size - 1, columns + 2)[1:-1].round().astype(int)
    return speech[idx]


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.fromarray(tile)
    draw = ImageDraw.Draw(img)
    w = draw.textlength(text)
    draw.rectangle((0, 0, w + 8, 14), fill=(0, 0, 0))
    draw.text((4, 1), text, fill=(255, 255, 255))
    return np.asarray(img)


def draw_sheet(runtime_parts, styles: list[str], labels: np.ndarray, columns: int, intensity: float,
               tile: int = 192, intensities: list[float] | None = None, silence: bool = False,
               style: StyleConfig | None = None) -> np.ndarray:
    """The sheet image uint8 ``(H, W, 3)``; ``runtime_parts`` = (decoder, style bank, renderer, avatar).

    ``intensities`` (default ``[intensity]``): one group of tiles per intensity along each row; ``silence``
    puts a tile of the style's silence (an all-SIL window) before the speech tiles of each group. ``style``
    (default: the defaults) gives the intensity space and, for a rest-aware renderer, which silence is drawn as
    the photo's own face (``rest``, ``lid_keep``), as a live session draws it.
    """
    from PIL import Image

    decoder, bank, renderer, avatar = runtime_parts
    style = style if style is not None else StyleConfig()
    space = style.intensity_space
    ks = list(intensities) if intensities else [intensity]
    frames = pick_frames(labels, columns)
    windows = phoneme_windows(labels)[frames]  # (F, 11)
    if silence:
        windows = np.concatenate([np.full((1, windows.shape[1]), SIL, windows.dtype), windows])  # (1+F, 11)
    state = renderer.prepare(avatar)
    pose = np.zeros((len(windows), 9), np.float32)
    rows = []
    for name in styles:
        row: list[np.ndarray] = []
        for k in ks:
            code = bank.styled(name, k, space)
            exp = decoder.decode(windows, code)  # (F, 64)
            if isinstance(renderer, RestAware):
                renderer.set_rest(state, renderer_rest(renderer, bank, decoder.idle, name, k, style))
            if hasattr(renderer, "reset"):
                renderer.reset(state)
            images = renderer.render(state, exp.astype(np.float32), pose)
            delay = renderer.delay_frames
            if delay:  # a windowed renderer answers late: flush to get every frame
                images = np.concatenate([images, renderer.flush(state)])[delay : delay + len(windows)]
            tiles = [np.asarray(Image.fromarray(im).resize((tile, tile), Image.Resampling.LANCZOS)) for im in images]
            label = name if (k == 1.0 and len(ks) == 1) else f"{name} x{k:g}"
            tiles[0] = _label(tiles[0], label + (" (silence)" if silence else ""))
            row += tiles
        rows.append(row)
    if columns <= 1 and len(ks) == 1 and not silence:  # one tile per style: wrap into a grid
        flat = [r[0] for r in rows]
        per_row = min(6, len(flat))
        blank = np.full_like(flat[0], 255)
        flat += [blank] * (-len(flat) % per_row)
        grid = [np.concatenate(flat[i : i + per_row], axis=1) for i in range(0, len(flat), per_row)]
        return np.concatenate(grid, axis=0)
    return np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)


def _parse_intensities(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        ks = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SheetError(f"--intensities must be comma-separated numbers, got {text!r}") from None
    if not ks or len(ks) > 8 or not all(0.0 <= k <= MAX_INTENSITY for k in ks):
        raise SheetError(f"--intensities must be 1..8 values in 0..{MAX_INTENSITY:g}, got {text!r}")
    return ks


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="styletalk-live styles",
        description="List the speaking styles usable with --style; with --sheet, draw each on the avatar.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sheet", metavar="OUT.png", default=None, help="write a picture of every style instead")
    p.add_argument("--columns", type=int, default=0,
                   help="0: one tile per style; K: rows = styles, K columns = the same K frames")
    p.add_argument("--only", default=None, metavar="A,B,...", help="comma-separated styles to draw (default all)")
    p.add_argument("--phonemes", default=None, metavar="FILE.json", help="phoneme labels to decode")
    p.add_argument("--tile", type=int, default=192, help="tile size in pixels")
    p.add_argument("--intensities", default=None, metavar="K,K,...",
                   help="draw every style at each of these intensities side by side (e.g. 0,1,2)")
    p.add_argument("--silence", action="store_true", help="start each group with a tile of the style's silence")
    # a sheet decodes given phonemes in every style: no recognizer, no starting style
    add_config_arguments(p, exclude=("--style", "--recognizer", "--labels", "--recognizer-lookahead", "--workers"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from engine.offline import InputError, load_phonemes
    from engine.runtime import build_decoder, build_renderer, build_styles, load_avatar
    from engine.stylebank import StyleError
    from models.clips import ClipError

    try:
        if not 0 <= args.columns <= 16:
            raise SheetError(f"--columns must be 0..16, got {args.columns}")
        if not 32 <= args.tile <= 512:
            raise SheetError(f"--tile must be 32..512, got {args.tile}")
        ks = _parse_intensities(args.intensities)
        config = config_from_args(args)
        config = replace(config, style=replace(config.style, default="neutral"))
        decoder = build_decoder(config)
        bank = build_styles(config, decoder)
        if args.sheet is None:
            for name in bank.names():
                print(name)
            return 0
        names = bank.names() if not args.only else [s.strip() for s in args.only.split(",") if s.strip()]
        for n in names:
            bank.get(n)  # unknown names fail here, with the list of known ones
        if args.phonemes:
            labels, source = load_phonemes(args.phonemes), args.phonemes
        else:
            labels, source = default_phonemes()
        log.info("drawing %d styles on phonemes of %s with the %s renderer", len(names), source,
                 config.renderer.kind)
        image = draw_sheet((decoder, bank, build_renderer(config), load_avatar(config)), names, labels,
                           args.columns, float(config.style.intensity), args.tile, ks, args.silence, config.style)
    except (ConfigError, ClipError, StyleError, SheetError, InputError) as exc:
        print(f"styletalk-live styles: error: {exc}", file=sys.stderr)
        return 2
    from PIL import Image

    out = Path(args.sheet)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(out)
    print(f"wrote {out} ({len(names)} styles, {image.shape[1]}x{image.shape[0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
