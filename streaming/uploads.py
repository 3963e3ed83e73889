"""Uploads of the control protocol, decoded off the event loop: style clips and avatar photos.

The bytes were validated at the edge (:mod:`streaming.protocol`: size, base64, file signature); here they go
through the engine's own readers, so an upload is read exactly like a file given on the command line.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import numpy as np

from streaming import protocol as P


def decode_clip(data: bytes, fmt: str) -> np.ndarray:
    """Uploaded style clip bytes → expression ``(T, 64)`` float32 through the shared clip reader."""
    from models.clips import load_style_clip  # the one reader of clip files (validates shape and values)

    with tempfile.TemporaryDirectory(prefix="styletalk-upload-") as tmp:
        path = Path(tmp) / f"upload.{fmt}"
        path.write_bytes(data)
        return load_style_clip(path)


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
