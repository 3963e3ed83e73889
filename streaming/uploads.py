"""Uploads of the control protocol, decoded off the event loop: style clips and avatar photos.

The bytes were validated at the edge (:mod:`streaming.protocol`: size, base64, file signature); here they go
through the engine's own readers, so an upload is read exactly like a file given on the command line.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import numpy as np


def decode_clip(data: bytes, fmt: str) -> np.ndarray:
    """Uploaded style clip bytes → expression ``(T, 64)`` float32 through the shared clip reader."""
    from models.clips import load_style_clip  # the one reader of clip files (validates shape and values)

    with tempfile.TemporaryDirectory(prefix="styletalk-upload-") as tmp:
        path = Path(tmp) / f"upload.{fmt}"
        path.write_bytes(data)
        return load_style_clip(path)


def decode_avatar(data: bytes, fmt: str, size: int) -> np.ndarray:
    """Uploaded PNG/JPEG bytes → the face crop ``(size, size, 3)`` uint8 RGB the renderer animates.

    Uses the engine's own reader and face detector/cropper (raises ``AvatarError`` for an unreadable image or
    one without exactly one usable face). Slow (face detection): run it off the event loop.
    """
    from engine.avatar import crop_face, load_image

    with tempfile.TemporaryDirectory(prefix="styletalk-upload-") as tmp:
        path = Path(tmp) / f"avatar.{'jpg' if fmt == 'jpeg' else fmt}"
        path.write_bytes(data)
        image = load_image(path)
    return crop_face(image, size=size).image


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
