"""Face detection, 68-point landmarks and face cropping of a photo; the built-in avatar.

Detection uses dlib's HOG frontal-face detector and the 68-point shape predictor that ships inside the
`face-recognition-models` package (no download at run time). That package's ``__init__`` imports
``pkg_resources``, which recent setuptools no longer ships, so the model file is located through the import
system's package spec instead of importing the package.

The crop follows the framing of the StyleTalk / PIRenderer training videos (256² crops with the eye-to-mouth
distance ≈ 0.27 of the side and the eyes at ≈ 0.39 of the height), so the same avatar suits both renderers.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Framing of the training crops, measured on the official sample images (source/image/*.png, 256²):
# eye-centre → mouth-centre distance 62–77 px (mean ≈ 70), eye centre at y ≈ 100, mouth at y ≈ 170.
EYE_MOUTH_FRACTION = 0.27
EYE_MOUTH_MIDPOINT_Y = 0.53  # vertical position of the eye/mouth midpoint in the crop (fraction of the side)

log = logging.getLogger(__name__)

# what the warp renderer does at the photo's edges under head motion (models/warp/core.py), stated in the avatar log
HEAD_MOTION_POLICY = ("head motion: the head goes where the pose asks; where it leaves an edge of the photo, the band "
                      "it uncovers is the photo's own background beside the face stretched (no pixels from beyond the "
                      "photo); the background away from the head and the photo's edges stay still")
MIN_FACE_PX = 24  # smaller faces carry too little detail for a usable avatar
SMALL_IMAGE_PX = 200  # smaller images are enlarged for detection
SCORE_THRESHOLD = 0.25  # dlib HOG score; weaker detections are mostly textures (badges, patterns)
SECOND_FACE_RATIO = 0.5  # a second face at least this fraction of the largest one's size is "several faces"


class AvatarError(ValueError):
    """The photo cannot be used as an avatar (unreadable, no face, several faces, face too small)."""


@dataclass(frozen=True)
class FaceBox:
    """A detected face rectangle in pixel coordinates, with dlib's detection score."""

    left: int
    top: int
    right: int
    bottom: int
    score: float

    @property
    def size(self) -> float:
        return float(max(self.right - self.left, self.bottom - self.top))


@dataclass(frozen=True)
class CroppedFace:
    """A square face crop and its landmarks.

    ``landmarks`` are (68, 2) float32 (x, y) pixel coordinates in the crop. ``scale`` and ``origin`` map crop
    pixels back to the photo: ``photo_xy = origin + crop_xy / scale``.
    """

    image: np.ndarray  # (size, size, 3) uint8
    landmarks: np.ndarray  # (68, 2) float32
    scale: float
    origin: tuple[float, float]
    adjusted: str = ""  # how the crop departs from the standard framing to stay inside the photo ("" = it does not)


def _predictor_path() -> Path:
    """The 68-point model inside the `face-recognition-models` package, found without importing it."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise AvatarError("the 'face-recognition-models' package is not installed (it ships the landmark model)")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise AvatarError(f"landmark model not found at {path}")
    return path


_DLIB_LOCK = threading.Lock()
"""dlib's detector and predictor are shared by the model worker (avatar preparation) and the upload threads
(style extraction); dlib does not promise that one object may be used from two threads at once, so every call
holds this lock (a call takes one frame's detection: milliseconds, never a whole upload)."""


@functools.cache
def _dlib_models() -> tuple[object, object]:
    """Load the detector and predictor once per process (the predictor file is ~100 MB)."""
    import dlib

    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(_predictor_path()))


def preload() -> None:
    """Load dlib's detector and predictor and import the image modules now.

    For the process that forks model workers (engine/model_template.py): every worker prepares its avatar with
    dlib, and loading the ~100 MB predictor costs each one ~2.5 CPU s; loaded once before the forks, the workers
    inherit it (copy-on-write). Loading starts no thread, so the template stays single-threaded when it forks.
    """
    import skimage.data  # noqa: F401 - the built-in photo's reader
    import skimage.io  # noqa: F401
    import skimage.transform  # noqa: F401 - crop_face's resize

    _dlib_models()


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Validate and normalise an image to contiguous (H, W, 3) uint8 RGB."""
    if not isinstance(image, np.ndarray):
        raise AvatarError(f"expected an image array, got {type(image).__name__}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise AvatarError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    image = image[:, :, :3]
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and image.size and float(np.nanmax(image)) <= 1.0:
            image = image * 255.0
        image = np.clip(np.nan_to_num(image), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


def load_image(path: str | Path, max_pixels: int = 100_000_000) -> np.ndarray:
    """Read a photo file into (H, W, 3) uint8 RGB; raises AvatarError when it is not a readable image.

    ``max_pixels`` is checked against the size Pillow's decoder will actually use (for a PNG the *last* IHDR
    chunk, for a JPEG its frame header), read without decoding, so a small file cannot make the decoder
    allocate a huge canvas. The default admits any camera photo; the server passes its upload limit.
    """
    import skimage.io
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise AvatarError(f"avatar image {path} does not exist")
    try:
        with Image.open(path) as probe:  # parses the headers only
            width, height = probe.size
    except Exception as exc:  # noqa: BLE001 - any header failure means "unreadable"
        raise AvatarError(f"cannot read avatar image {path}: {exc}") from exc
    if width * height > max_pixels:
        raise AvatarError(f"image is {width}x{height} pixels, more than the limit of {max_pixels}")
    try:
        image = skimage.io.imread(path)
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "unreadable"
        raise AvatarError(f"cannot read avatar image {path}: {exc}") from exc
    if image.ndim == 3 and image.shape[2] == 4:  # composite transparency over white
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        image = (image[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).round()
    return _as_rgb_uint8(np.asarray(image))


def detect_faces(image: np.ndarray, upsample: int | None = None) -> list[FaceBox]:
    """All plausible faces, largest first.

    With ``upsample=None`` the image is searched at native resolution first and upsampled once only when
    nothing is found there and the image is small (upsampling quadruples the cost and adds false positives).
    """
    image = _as_rgb_uint8(image)
    detector, _ = _dlib_models()
    tries = [upsample] if upsample is not None else ([0, 1] if max(image.shape[:2]) <= 1024 else [0])
    for up in tries:
        with _DLIB_LOCK:
            rects, scores, _ = detector.run(image, up, 0.0)
        boxes = [
            FaceBox(r.left(), r.top(), r.right(), r.bottom(), float(s))
            for r, s in zip(rects, scores, strict=True)
            if s >= SCORE_THRESHOLD
        ]
        if boxes:
            return sorted(boxes, key=lambda b: -b.size)
    return []


def landmarks_in_box(image: np.ndarray, box: FaceBox) -> np.ndarray:
    """The 68 dlib landmarks (68, 2) float32 of the face in ``box``."""
    import dlib

    _, predictor = _dlib_models()
    rgb = _as_rgb_uint8(image)
    with _DLIB_LOCK:
        shape = predictor(rgb, dlib.rectangle(box.left, box.top, box.right, box.bottom))
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)


def detect_landmarks(image: np.ndarray, allow_several: bool = False) -> np.ndarray:
    """Landmarks (68, 2) float32 of the one face in the photo.

    Raises AvatarError when there is no face, when a second face of comparable size is present (unless
    ``allow_several``, which takes the largest), or when the face is too small to animate.
    """
    image = _as_rgb_uint8(image)
    zoom = 1.0
    if max(image.shape[:2]) < SMALL_IMAGE_PX:  # HOG finds no face below ~80 px: look at an enlarged copy
        from skimage.transform import resize

        zoom = SMALL_IMAGE_PX / max(image.shape[:2])
        shape = (round(image.shape[0] * zoom), round(image.shape[1] * zoom))
        image = np.clip(resize(image, shape, order=1, preserve_range=True), 0, 255).astype(np.uint8)
    boxes = detect_faces(image)
    if not boxes:
        raise AvatarError("no face found in the image (use a frontal photo with one clearly visible face)")
    main = boxes[0]
    others = [b for b in boxes[1:] if b.size >= SECOND_FACE_RATIO * main.size]
    if others and not allow_several:
        raise AvatarError(
            f"found {1 + len(others)} faces in the image; crop the photo so that it shows exactly one face"
        )
    if main.size / zoom < MIN_FACE_PX:
        raise AvatarError(
            f"the face is too small ({main.size / zoom:.0f} px; need at least {MIN_FACE_PX} px): use a larger photo"
        )
    lmk = landmarks_in_box(image, main)
    return lmk if zoom == 1.0 else ((lmk + 0.5) / zoom - 0.5).astype(np.float32)


def crop_face(image: np.ndarray, size: int = 256, landmarks: np.ndarray | None = None) -> CroppedFace:
    """Square crop around the face, resized to ``size``², framed like the training videos.

    The crop is axis-aligned (no de-rolling: a tilted head stays tilted, as in the photo).

    Pad/crop policy: no invented pixels. A crop that would reach outside the photo is shifted back inside, and
    when the photo is too small for the standard framing the crop is tightened to the photo's shorter side
    (the face then fills more of the frame); ``adjusted`` says what was done and it is logged. (Edge
    replication used to fill such parts: it showed as vertical streaks below the chin.) Under head motion the
    same holds (``HEAD_MOTION_POLICY``, logged with the crop).
    """
    from skimage.transform import resize

    image = _as_rgb_uint8(image)
    lmk = detect_landmarks(image) if landmarks is None else np.asarray(landmarks, dtype=np.float32)
    eyes = lmk[36:48].mean(axis=0)
    mouth = lmk[48:68].mean(axis=0)
    eye_mouth = float(np.linalg.norm(mouth - eyes))
    if eye_mouth < 8.0:
        raise AvatarError(f"the face is too small (eye-to-mouth distance {eye_mouth:.1f} px)")
    side = eye_mouth / EYE_MOUTH_FRACTION  # crop side in photo pixels
    centre = (eyes + mouth) / 2.0
    x0 = int(round(centre[0] - side / 2.0))
    y0 = int(round(centre[1] - EYE_MOUTH_MIDPOINT_Y * side))
    side_i = int(round(side))
    h, w = image.shape[:2]
    notes = []
    if side_i > min(h, w):
        notes.append(f"tightened from {side_i} to {min(h, w)} px (the photo is smaller than the standard framing)")
        x0 += (side_i - min(h, w)) // 2
        y0 += round((side_i - min(h, w)) * EYE_MOUTH_MIDPOINT_Y)
        side_i = min(h, w)
    nx0, ny0 = min(max(x0, 0), w - side_i), min(max(y0, 0), h - side_i)
    if (nx0, ny0) != (x0, y0):
        notes.append(f"shifted by ({nx0 - x0:+d}, {ny0 - y0:+d}) px to stay inside the photo")
        x0, y0 = nx0, ny0
    patch = image[y0 : y0 + side_i, x0 : x0 + side_i]
    if side_i != size:
        patch = resize(patch, (size, size), order=1, anti_aliasing=side_i > size, preserve_range=True)
        patch = np.clip(np.round(patch), 0, 255).astype(np.uint8)
    scale = size / side_i
    crop_lmk = ((lmk - np.array([x0, y0], dtype=np.float32)) * scale).astype(np.float32)
    adjusted = "; ".join(notes)
    log.info("avatar: %dx%d photo, face crop %d px at (%d, %d) → %d²%s; %s", w, h, side_i, x0, y0, size,
             f"; {adjusted} (no padding)" if adjusted else " (standard framing)", HEAD_MOTION_POLICY)
    return CroppedFace(image=np.ascontiguousarray(patch), landmarks=crop_lmk, scale=scale, origin=(x0, y0),
                       adjusted=adjusted)


@functools.cache
def _builtin_avatar_cached(size: int) -> np.ndarray:
    import skimage.data

    face = crop_face(skimage.data.astronaut(), size=size)
    face.image.setflags(write=False)
    return face.image


def builtin_avatar(size: int = 256) -> np.ndarray:
    """The built-in avatar: the public-domain NASA portrait `skimage.data.astronaut()`, face-cropped.

    Ships inside scikit-image, so the engine runs with no user files. Returns a fresh (size, size, 3) uint8.
    """
    return _builtin_avatar_cached(int(size)).copy()
