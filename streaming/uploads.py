"""Uploads of the control protocol, decoded off the event loop: style clips, style videos and avatar photos.

The decoders run in the server's upload decoder process (``PresenterServer.decode_upload``): module-level
functions of plain bytes, so they pickle to a spawned process.

The bytes were validated at the edge (:mod:`streaming.protocol`: size, base64, file signature); here they go
through the engine's own readers, so an upload is read exactly like a file given on the command line.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from streaming import protocol as P


class DecoderFailed(ValueError):
    """The upload decoder process died while decoding (the upload is refused, the server goes on)."""


def decode_clip(data: bytes, fmt: str) -> np.ndarray:
    """Uploaded style clip bytes → expression ``(T, 64)`` float32 through the shared clip reader."""
    from models.clips import load_style_clip  # the one reader of clip files (validates shape and values)

    with tempfile.TemporaryDirectory(prefix="styletalk-upload-") as tmp:
        path = Path(tmp) / f"upload.{fmt}"
        path.write_bytes(data)
        return load_style_clip(path)


def extract_video_clip(data: bytes, fmt: str, style_config: Any, on_progress: Callable[[int, Any], None]
                       ) -> np.ndarray:
    """Uploaded style video bytes → expression ``(T, 64)`` through the engine's extractor (raises
    ``StyleExtractError`` with a stable ``code``; limits from ``style.video_*``). Slow: landmarks on every frame."""
    from engine.style_extract import ExtractLimits, extract_style
    from engine.user_styles import limits_from

    limits = limits_from(style_config) if style_config is not None else ExtractLimits()
    with tempfile.TemporaryDirectory(prefix="styletalk-upload-") as tmp:
        path = Path(tmp) / f"style.{fmt}"
        path.write_bytes(data)
        return extract_style(path, limits, on_progress=on_progress).exp


AVATAR_DETECT_SIDE = 1024  # photos are shrunk to this before face detection (cost grows with the pixels)


def decode_avatar(data: bytes, fmt: str, size: int) -> np.ndarray:
    """Uploaded PNG/JPEG bytes → the face crop ``(size, size, 3)`` uint8 RGB the renderer animates.

    Uses the engine's own reader and face detector/cropper (raises ``AvatarError`` for an unreadable image or
    one without exactly one usable face). The decoded size is bounded by what the decoder will really use
    (not the first header: a PNG may carry a second IHDR), and large photos are shrunk before the face
    detection, whose time and memory grow with the pixel count; the crop is ``size``² (256) anyway.
    Slow (face detection): run it off the event loop.
    """
    from engine.avatar import crop_face, load_image

    with tempfile.TemporaryDirectory(prefix="styletalk-upload-") as tmp:
        path = Path(tmp) / f"avatar.{'jpg' if fmt == 'jpeg' else fmt}"
        path.write_bytes(data)
        image = load_image(path, max_pixels=P.MAX_IMAGE_SIDE**2)
    return crop_face(_shrink(image, AVATAR_DETECT_SIDE), size=size).image


def _shrink(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` (H, W, 3) uint8 box-filtered by an integer factor so that its longer side is <= ``side``."""
    factor = -(-max(image.shape[:2]) // side)
    if factor <= 1:
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).reduce(factor))


def clip_errors() -> tuple[type[BaseException], ...]:
    from models.clips import ClipError

    errors: list[type[BaseException]] = [ClipError]
    with contextlib.suppress(ImportError):
        from engine.stylebank import StyleError

        errors.append(StyleError)
    return tuple(errors)


def avatar_errors() -> tuple[type[BaseException], ...]:
    from engine.avatar import AvatarError

    return (AvatarError,)
