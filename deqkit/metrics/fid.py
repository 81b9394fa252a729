"""Fréchet distance between the feature statistics of two image sets (FID, Heusel et al. 2017).

The statistics and the matrix square root come from torchmetrics' ``FrechetInceptionDistance`` (a
well-kept implementation), which accepts any feature extractor. Two extractors:

- :func:`small_extractor`: a fixed, randomly initialised CNN (seeded). Cheap, needs no weights; its
  distances compare models with each other on one dataset, not with published FIDs.
- Inception-v3 (the standard FID), read from a local weights file the user names (torch-fidelity's
  ``pt_inception-2015-12-05`` file; install with ``pip install 'deqkit[inception]'``). Nothing is
  downloaded.

Images are float ``[B,3,H,W]`` in ``[0, 1]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from deqkit.errors import ConfigError

INCEPTION_HELP = ("FID with Inception-v3 needs a local weights file (torch-fidelity's pt_inception-2015-12-05 "
                  "*.pth); pass its path, or use the small extractor; nothing is downloaded")


class SmallFeatures(nn.Module):
    """A fixed random CNN: ``[B,3,H,W]`` in [0, 1] -> ``[B, num_features]`` (global average of ReLU maps
    after three stride-2 convolutions)."""

    def __init__(self, num_features: int = 64, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        widths = (3, 32, 64, num_features)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(widths, widths[1:]))
        for conv in self.convs:
            fan_in = conv.in_channels * 9
            conv.weight.data = torch.randn(conv.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5
            conv.bias.data.zero_()
        self.num_features = num_features
        self.requires_grad_(False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.float() * 2.0 - 1.0
        for conv in self.convs:
            x = torch.relu(conv(x))
        return x.mean(dim=(2, 3))


def small_extractor(num_features: int = 64, seed: int = 0) -> nn.Module:
    """The default cheap extractor (see :class:`SmallFeatures`)."""
    return SmallFeatures(num_features, seed).eval()


def fid_metric(extractor: nn.Module | None = None, *, inception_weights: str | Path | None = None):
    """A torchmetrics ``FrechetInceptionDistance``: with ``extractor`` (any module mapping images to
    ``[B, F]``; give it an int attribute ``num_features`` to skip a probe), or Inception-v3 from the local
    file ``inception_weights``. Feed it with ``update(images, real=True/False)``, read ``compute()``."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except (ImportError, RuntimeError) as err:  # e.g. a torchvision built for another torch (CUDA on a CPU torch)
        raise ConfigError(f"FID is unavailable: importing torchmetrics' FID failed ({err}); is torchvision or "
                          "torch-fidelity built for a different torch? uninstall them or match them") from None
    if extractor is not None:
        return FrechetInceptionDistance(feature=extractor, normalize=True, reset_real_features=True)
    if inception_weights is None:
        raise ConfigError(INCEPTION_HELP)
    path = Path(inception_weights)
    if not path.is_file():
        raise ConfigError(f"Inception weights file {path} does not exist; {INCEPTION_HELP}")
    try:
        import torch_fidelity  # noqa: F401
    except (ImportError, RuntimeError):  # absent, or its torchvision does not load on this torch
        raise ConfigError("FID with Inception-v3 needs torch-fidelity and a torchvision built for this torch: "
                          "pip install 'deqkit[inception]'") from None
    return FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=str(path))


def frechet_distance(real: Iterable[torch.Tensor], fake: Iterable[torch.Tensor], extractor: nn.Module | None = None,
                     *, inception_weights: str | Path | None = None) -> float:
    """FID between two streams of image batches (see :func:`fid_metric` for the extractor)."""
    metric = fid_metric(extractor, inception_weights=inception_weights)
    with torch.no_grad():
        for images in real:
            metric.update(images, real=True)
        for images in fake:
            metric.update(images, real=False)
    return float(metric.compute())
