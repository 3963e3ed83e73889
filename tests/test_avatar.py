"""Face detection, landmarks, cropping and the built-in avatar (engine/avatar.py) on real images."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from skimage.transform import resize

from engine.avatar import (
    EYE_MOUTH_FRACTION,
    AvatarError,
    builtin_avatar,
    crop_face,
    detect_faces,
    detect_landmarks,
    load_image,
)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


def test_astronaut_has_one_face_with_68_landmarks(astronaut: np.ndarray) -> None:
    lmk = detect_landmarks(astronaut)
    assert lmk.shape == (68, 2) and lmk.dtype == np.float32
    box = detect_faces(astronaut)[0]
    # every landmark near the detected face box, eyes above the mouth, left eye left of the right eye
    assert (lmk[:, 0] > box.left - 20).all() and (lmk[:, 0] < box.right + 20).all()
    assert (lmk[:, 1] > box.top - 20).all() and (lmk[:, 1] < box.bottom + 30).all()
    assert lmk[36:48, 1].mean() < lmk[48:68, 1].mean()
    assert lmk[36:42, 0].mean() < lmk[42:48, 0].mean()


@pytest.mark.parametrize(
    "image",
    [np.full((240, 320, 3), 128, np.uint8), skimage.data.coffee()],
    ids=["uniform-grey", "coffee"],
)
def test_no_face_raises(image: np.ndarray) -> None:
    with pytest.raises(AvatarError, match="no face"):
        detect_landmarks(image)


def test_two_faces_raise(astronaut: np.ndarray) -> None:
    twice = np.concatenate([astronaut, astronaut], axis=1)
    with pytest.raises(AvatarError, match="faces"):
        detect_landmarks(twice)
    # the caller may accept the largest one explicitly
    assert detect_landmarks(twice, allow_several=True).shape == (68, 2)


def test_too_small_face_raises(astronaut: np.ndarray) -> None:
    small = np.clip(resize(astronaut, (96, 96), anti_aliasing=True) * 255, 0, 255).astype(np.uint8)
    with pytest.raises(AvatarError, match="too small"):
        detect_landmarks(small)


def test_unreadable_and_missing_files(tmp_path) -> None:
    bad = tmp_path / "photo.png"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(AvatarError, match="cannot read"):
        load_image(bad)
    with pytest.raises(AvatarError, match="does not exist"):
        load_image(tmp_path / "missing.jpg")
    assert issubclass(AvatarError, ValueError)


def test_load_image_reads_rgba_as_rgb(tmp_path, astronaut: np.ndarray) -> None:
    import skimage.io

    rgba = np.concatenate([astronaut[:64, :64], np.full((64, 64, 1), 255, np.uint8)], axis=2)
    path = tmp_path / "a.png"
    skimage.io.imsave(path, rgba, check_contrast=False)
    image = load_image(path)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, astronaut[:64, :64])


def test_crop_frames_the_face_like_the_training_videos(astronaut: np.ndarray) -> None:
    face = crop_face(astronaut, size=256)
    assert face.image.shape == (256, 256, 3) and face.image.dtype == np.uint8
    eye_mouth = np.linalg.norm(face.landmarks[48:68].mean(0) - face.landmarks[36:48].mean(0))
    assert eye_mouth == pytest.approx(EYE_MOUTH_FRACTION * 256, rel=0.02)
    # the transformed landmarks agree with a fresh detection on the crop
    again = detect_landmarks(face.image)
    assert np.abs(again - face.landmarks).mean() < 3.0
    # and map back onto the photo
    back = np.array(face.origin) + face.landmarks / face.scale
    assert np.abs(back - detect_landmarks(astronaut)).mean() < 1.0


def test_crop_stays_inside_the_photo_when_the_face_is_near_the_border(astronaut: np.ndarray) -> None:
    photo = astronaut[60:, 150:]  # face close to the top-left corner
    face = crop_face(photo, size=128)
    assert face.image.shape == (128, 128, 3)
    assert detect_landmarks(face.image).shape == (68, 2)
    assert "shifted" in face.adjusted  # and says so
    x0, y0 = (int(v) for v in face.origin)
    side = round(128 / face.scale)
    assert x0 >= 0 and y0 >= 0 and x0 + side <= photo.shape[1] and y0 + side <= photo.shape[0]  # no padding
    # no replicated-edge streaks: the first rows differ from each other as much as photo rows do
    assert np.abs(np.diff(face.image[:4].astype(np.int16), axis=0)).mean() > 0.5
    small = crop_face(photo[:150, :150], size=128)  # smaller than the standard framing: tightened, not padded
    assert "tightened" in small.adjusted and small.image.shape == (128, 128, 3)


def test_the_avatar_report_states_the_pad_crop_and_head_motion_policy(
    astronaut: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="engine.avatar"):
        crop_face(astronaut[60:, 150:], size=128)
    report = " ".join(r.getMessage() for r in caplog.records if r.name == "engine.avatar")
    assert "shifted" in report and "no padding" in report
    assert "no pixels from beyond the photo" in report and "background away from the head" in report


def test_builtin_avatar_is_a_face_crop() -> None:
    a = builtin_avatar()
    assert a.shape == (256, 256, 3) and a.dtype == np.uint8
    lmk = detect_landmarks(a)
    assert 0.3 * 256 < lmk[36:48, 1].mean() < 0.45 * 256  # eyes where the training crops have them
    b = builtin_avatar(128)
    assert b.shape == (128, 128, 3)
    a[:] = 0  # callers get their own copy
    assert builtin_avatar().any()
