"""Built-in warp renderer: expression coefficients → landmarks → thin-plate-spline backward warp of one photo.

Why this design: it needs no trained generator (the only learned part is a 64 → 136 linear map fitted on the
shared sample videos, `assets/exp2lmk.npz`), runs in a few milliseconds on a CPU, and keeps the photo's own
pixels, so any face photo works as an avatar.

Pipeline per frame (all batched over N frames, float32, fixed shapes once an avatar is prepared):

1. ``offsets = clip(exp - exp_ref) @ W`` gives the 68 landmark offsets in the *face frame* (pose-free, h along
   the eyes, v down the face, in inter-ocular units, IOD = outer eye corners 36–45). ``exp_ref`` is the photo's
   own expression (zeros = assume the photo shows the 3DMM's neutral face).
2. Caps and fold guards in the face frame (brows/eyes capped for strong styles; lips and eyelids may touch but
   not cross; lips keep part of their thickness).
3. Optional head motion: the 9 pose parameters relative to a reference pose are mapped linearly (also fitted on
   the sample videos) to a similarity of the face (rotation, scale, shift), clamped; sideways the head travels
   no further than the photo has background beside the face to uncover.
4. Backward thin-plate spline from target → source positions at the landmarks, forehead points and fixed
   border points, fitted for the still head; evaluated on a coarse grid (with head motion: at each grid point
   taken back through the motion, so the head moves rigidly), confined to a soft head mask that holds the
   background and the photo's edges (its band widens with the motion; a still head uses the same mask, so a
   frame renders alike in a still and a moving batch), bilinearly upsampled, then ``grid_sample``.
5. Region models for what a smooth spline cannot express, each a 1-D remap along the face's vertical axis,
   computed on a small face-aligned lattice and resampled into the frame: the eyes (a closing lid slides *over*
   the eyeball instead of squashing it) and the mouth (teeth ride rigidly with their jaw; only area hidden in
   the photo is painted, with teeth coloured from the photo when it shows teeth).

Module map: ``landmarks`` (index sets, the fitted map), ``tps`` (geometry and spline maths), ``config``
(tunables), ``avatar`` (per-photo preparation, lattice resampling), ``eyes`` and ``mouth`` (region models),
``interior`` (real mouth interiors), ``matte`` (head-and-hair segmentation and background plate for far travel),
``core`` (the per-frame pipeline).
"""

from models.warp.avatar import Region, WarpAvatar, prepare_avatar
from models.warp.config import WarpConfig
from models.warp.core import IndexSets, WarpCore
from models.warp.interior import BANK_PATH, Interior, MouthBank
from models.warp.landmarks import ASSET_PATH, ExpressionMap
from models.warp.tps import affine2, interp_curve, px_to_norm, similarity, tps_eval, tps_fit, tps_kernel

__all__ = [
    "ASSET_PATH", "BANK_PATH", "ExpressionMap", "Interior", "MouthBank",
    "IndexSets", "Region", "WarpAvatar", "WarpConfig", "WarpCore", "affine2",
    "interp_curve", "prepare_avatar", "px_to_norm", "similarity", "tps_eval", "tps_fit", "tps_kernel",
]
