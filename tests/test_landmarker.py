"""engine.landmarker: the one seam in front of the 68-point landmark model (real dlib on a real sample video)."""

from __future__ import annotations

import numpy as np

from engine.contracts import Landmarker
from engine.landmark_fit import read_video_rgb, video_landmarks
from engine.landmarker import DlibLandmarker, default_landmarker
from models.dataset import default_data_dir


def _frames(n: int = 3) -> list[np.ndarray]:
    return read_video_rgb(default_data_dir() / "source" / "video" / "Obama_clip1.mp4")[:n]


def test_default_landmarker_fits_the_contract_and_finds_the_face() -> None:
    lm = default_landmarker()
    assert isinstance(lm, Landmarker) and isinstance(lm, DlibLandmarker)
    frame = _frames(1)[0]
    boxes = lm.detect_faces(frame)
    assert len(boxes) == 1
    box = boxes[0]
    pts = lm.landmarks_in_box(frame, box)
    assert pts.shape == (68, 2) and pts.dtype == np.float32
    inside = (pts[:, 0] >= box.left - 5) & (pts[:, 0] <= box.right + 5) & (pts[:, 1] >= box.top - 5)
    assert inside.mean() > 0.9
    assert pts[8, 1] > pts[30, 1] > pts[27, 1]  # chin below nose tip below nose bridge (iBUG 300-W order)


class _Counting:
    """Another landmarker: counts calls, delegates to dlib (what a replacement model would plug into)."""

    def __init__(self) -> None:
        self.inner = DlibLandmarker()
        self.calls = 0

    def detect_faces(self, image, upsample=None):
        self.calls += 1
        return self.inner.detect_faces(image, upsample)

    def landmarks_in_box(self, image, box):
        return self.inner.landmarks_in_box(image, box)


def test_the_landmark_fit_uses_the_landmarker_it_is_given() -> None:
    frames = _frames(3)
    other = _Counting()
    assert isinstance(other, Landmarker)
    got = video_landmarks(frames, landmarker=other)
    assert other.calls >= 3
    np.testing.assert_array_equal(got, video_landmarks(frames))  # same model, same result
