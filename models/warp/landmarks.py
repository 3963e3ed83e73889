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



@dataclass(frozen=True)
class ExpressionMap:
    """The fitted linear maps (see engine/landmark_fit.py and assets/exp2lmk.md)."""

    weights: torch.Tensor  # (64, 68, 2) expression → face-frame landmark offsets (IOD)
    mean_shape: torch.Tensor  # (68, 2) face-frame mean shape (IOD, origin at the stable-point centroid)
    exp_std: torch.Tensor  # (64,) spread of the training coefficients
    pose_weights: torch.Tensor  # (9, 4) Δpose → [log scale, rotation (rad), dx, dy (IOD, image axes)]

    @classmethod
    def load(cls, path: str | Path | None = None, heldout_clip: str | None = None) -> ExpressionMap:
        """Load the shipped map; ``heldout_clip`` selects the variant fitted without that sample clip."""
        with np.load(Path(path) if path else ASSET_PATH) as data:
            key = "weights" if heldout_clip is None else f"heldout/{heldout_clip}"
            if key not in data:
                raise KeyError(f"{key!r} not in the expression map (have {sorted(data.files)})")
            return cls(
                weights=torch.from_numpy(data[key].astype(np.float32)).reshape(64, 68, 2),
                mean_shape=torch.from_numpy(data["mean_shape"].astype(np.float32)),
                exp_std=torch.from_numpy(data["exp_std"].astype(np.float32)),
                pose_weights=torch.from_numpy(data["pose_weights"].astype(np.float32)),
            )

