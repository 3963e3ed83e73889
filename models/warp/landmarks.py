"""dlib 68-point landmark index sets, and the fitted expression → landmark map (assets/exp2lmk.npz).

The map is the only learned part of the warp renderer (engine/landmark_fit.py fits it; models/assets/exp2lmk.md
is its data card). Index sets live here so that every region model names the same points the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ASSET_PATH = Path(__file__).resolve().parents[1] / "assets" / "exp2lmk.npz"

# dlib 68-point indices
STABLE = (27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45)  # barely move with expression
BROWS = slice(17, 27)
LIPS = slice(48, 68)
EYE_CORNERS = (36, 39, 42, 45)
LIDS_UP = (37, 38, 43, 44)  # paired with LIDS_LO
LIDS_LO = (41, 40, 47, 46)
EYE_UP = ((36, 37, 38, 39), (42, 43, 44, 45))  # per eye, corner to corner
EYE_LO = ((36, 41, 40, 39), (42, 47, 46, 45))
LIP_UP_IN = (60, 61, 62, 63, 64)
LIP_LO_IN = (60, 67, 66, 65, 64)
LIP_LO_OUT = (48, 59, 58, 57, 56, 55, 54)
LIP_PAIRS_IN = ((61, 67), (62, 66), (63, 65))  # (upper inner, lower inner)
LIP_PAIRS_UP = ((50, 61), (51, 62), (52, 63))  # (upper outer, upper inner)
LIP_PAIRS_LO = ((58, 67), (57, 66), (56, 65))  # (lower outer, lower inner)
FOREHEAD_FROM = (0, 17, 19, 21, 22, 24, 26, 16)  # forehead control points sit above these

_IDX = {
    "stable": list(STABLE), "forehead": list(FOREHEAD_FROM), "corners": list(EYE_CORNERS),
    "lids_up": list(LIDS_UP), "lids_lo": list(LIDS_LO),
    "lip_up_in": list(LIP_UP_IN), "lip_lo_in": list(LIP_LO_IN), "lip_lo_out": list(LIP_LO_OUT),
    "pairs_in_u": [u for u, _ in LIP_PAIRS_IN], "pairs_in_l": [lo for _, lo in LIP_PAIRS_IN],
    "lo_out_mid": [o for o, _ in LIP_PAIRS_LO], "lo_out_side": [59, 55],
    "lip_outer": [o for o, _ in LIP_PAIRS_UP + LIP_PAIRS_LO], "lip_inner": [i for _, i in LIP_PAIRS_UP + LIP_PAIRS_LO],
    "lips": list(range(48, 68)),
}
# source-curve lookup table rows: eye 0 upper/lower, eye 1 upper/lower, lips upper inner/lower inner/lower outer
_LUT_CURVES = (EYE_UP[0], EYE_LO[0], EYE_UP[1], EYE_LO[1], LIP_UP_IN, LIP_LO_IN, LIP_LO_OUT)

# Head pose → 2-D head motion. A pose row is [angles (3), 3DMM translation (3), crop scale s, crop tx, ty]
# (models.clips.load_pose). The sample videos' faces sit where the crop puts them, so in inter-ocular units the
# head's image position goes with the crop's translation *times its scale* (a face filmed larger is cropped
# with a smaller s): a linear map in raw (tx, ty) gets every speaker's travel right only at the pooled face
# size (feifeili's heads travelled ~10 % too far sideways, 6-9 px over the clip). Out-of-plane rotation moves
# the stable points' centroid and apparent roll non-linearly (squares and the pitch·yaw product). Held out one
# clip at a time (engine.landmark_fit.fit_pose_map), the rigid mouth-centre error over the 8 source clips went
# 3.15 → 2.56 px and over all 24 usable clips 4.6 → 3.4 px.
STANDARD_CROP = (1.0, 128.0, 128.0)  # (s, tx, ty) of a face framed as the sample videos frame it
POSE_FEATURES = 15


def pose_features(pose: torch.Tensor, relative: torch.Tensor | bool) -> torch.Tensor:
    """(N, 9) poses → (N, 15) features: the 9 raw parameters, squared angles, pitch·yaw, (t − 128)·(s − 1).

    ``relative``: the poses carry no crop (the engine's idle motion: crop parameters are offsets around 0, not a
    crop scale near 1), so their crop part is read as offsets from :data:`STANDARD_CROP`. Only the crop product
    depends on it; every other feature enters the map as a difference.
    """
    crop = pose[:, 6:9] + torch.as_tensor(STANDARD_CROP, dtype=pose.dtype) * relative
    ang = pose[:, 0:3]
    return torch.cat([pose, ang * ang, ang[:, 0:1] * ang[:, 1:2], (crop[:, 1:3] - 128.0) * (crop[:, 0:1] - 1.0)], 1)


def is_relative_pose(pose_ref: torch.Tensor) -> torch.Tensor:
    """Whether a reference pose (9,) carries no crop (scale ≤ 0.5: the sample crops' scales are 0.85–1.22)."""
    return (pose_ref[6] <= 0.5).to(pose_ref.dtype)



@dataclass(frozen=True)
class ExpressionMap:
    """The fitted linear maps (see engine/landmark_fit.py and assets/exp2lmk.md)."""

    weights: torch.Tensor  # (64, 68, 2) expression → face-frame landmark offsets (IOD)
    mean_shape: torch.Tensor  # (68, 2) face-frame mean shape (IOD, origin at the stable-point centroid)
    exp_std: torch.Tensor  # (64,) spread of the training coefficients
    pose_weights: torch.Tensor  # (15, 4) Δpose_features → [log scale, rotation (rad), dx, dy (IOD, image axes)]

    @classmethod
    def load(cls, path: str | Path | None = None, heldout_clip: str | None = None) -> ExpressionMap:
        """Load the shipped map; ``heldout_clip`` selects the variant fitted without that sample clip."""
        with np.load(Path(path) if path else ASSET_PATH) as data:
            key = "weights" if heldout_clip is None else f"heldout/{heldout_clip}"
            if key not in data:
                raise KeyError(f"{key!r} not in the expression map (have {sorted(data.files)})")
            pose_key = "pose_weights" if heldout_clip is None else f"heldout_pose/{heldout_clip}"
            pose = data[pose_key if pose_key in data else "pose_weights"].astype(np.float32)
            # a map fitted before the pose features (9 raw rows) is the same map with zero feature weights
            pose = np.concatenate([pose, np.zeros((POSE_FEATURES - len(pose), 4), np.float32)])
            return cls(
                weights=torch.from_numpy(data[key].astype(np.float32)).reshape(64, 68, 2),
                mean_shape=torch.from_numpy(data["mean_shape"].astype(np.float32)),
                exp_std=torch.from_numpy(data["exp_std"].astype(np.float32)),
                pose_weights=torch.from_numpy(pose),
            )

