"""Metrics for object-centric and autoencoding models, batched and device-agnostic.

- :func:`ari`, :func:`fg_ari`: adjusted Rand index of a predicted segmentation (all pixels / foreground);
  :func:`fg_ari_undefined` flags the images on which DeepMind's reference FG-ARI is NaN (here 1.0).
- :func:`matched_miou`: mean IoU of true objects matched to predicted slots (Hungarian).
- :func:`hungarian_match`: batched one-to-one matching, also used by matched set-prediction losses.
- :func:`slot_jacobian_norms`, :func:`jacobian_ari`, :func:`jacobian_interaction_score`: which slot each
  output pixel depends on, from a decoder's Jacobian (J-ARI, JIS).
- :func:`reconstruction_mse`: per-sample mean squared reconstruction error.
- :func:`average_precision`: AP of predicted object sets at distance thresholds (Locatello et al. 2020,
  Zhang et al. 2022), a dataset-level value (``{threshold: AP}``), not one per sample.
- :func:`frechet_distance`, :func:`fid_metric`, :func:`small_extractor`: FID of two image sets with any
  feature extractor (torchmetrics; Inception-v3 from a local weights file), in :mod:`deqkit.metrics.fid`.

The others return one value per sample (``Tensor[B]``); reduce as you see fit.
"""

from deqkit.metrics.fid import fid_metric, frechet_distance, small_extractor
from deqkit.metrics.jacobian import jacobian_ari, jacobian_interaction_score, jacobian_masks, slot_jacobian_norms
from deqkit.metrics.matching import hungarian_match
from deqkit.metrics.reconstruction import reconstruction_mse
from deqkit.metrics.segmentation import ari, fg_ari, fg_ari_undefined, matched_miou
from deqkit.metrics.set_prediction import THRESHOLDS as AP_THRESHOLDS
from deqkit.metrics.set_prediction import average_precision

__all__ = [
    "AP_THRESHOLDS", "ari", "average_precision", "fg_ari", "fg_ari_undefined", "fid_metric", "frechet_distance",
    "hungarian_match", "jacobian_ari", "jacobian_interaction_score", "jacobian_masks", "matched_miou",
    "reconstruction_mse", "slot_jacobian_norms", "small_extractor",
]
