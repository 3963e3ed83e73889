"""The face landmarker behind :class:`engine.contracts.Landmarker` - one place to swap the landmark model.

Why a seam: the 68-point model that ``dlib``/``face_recognition_models`` ship was trained on iBUG 300-W, whose
terms exclude commercial use (see README, "Licences"). Callers that need faces/landmarks take a
:class:`~engine.contracts.Landmarker` (default: :func:`default_landmarker`) instead of calling dlib, so a
differently licensed model with the same 68-point layout can be dropped in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.contracts import FaceBoxLike, Landmarker


class DlibLandmarker:
    """dlib's HOG face detector + 68-point shape predictor (the functions of :mod:`engine.avatar`)."""

    def detect_faces(self, image: np.ndarray, upsample: int | None = None) -> Sequence[FaceBoxLike]:
        from engine.avatar import detect_faces

        return detect_faces(image, upsample=upsample)

    def landmarks_in_box(self, image: np.ndarray, box: FaceBoxLike) -> np.ndarray:
        from engine.avatar import FaceBox, landmarks_in_box

        if not isinstance(box, FaceBox):
            box = FaceBox(box.left, box.top, box.right, box.bottom, box.score)
        return landmarks_in_box(image, box)


def default_landmarker() -> Landmarker:
    return DlibLandmarker()
