"""deqkit.metrics.fid: the Fréchet distance through torchmetrics with a custom extractor equals the
closed form computed with scipy.linalg.sqrtm; the small extractor separates different image sets; the
Inception path refuses to run without a local weights file."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from deqkit.metrics import frechet_distance, small_extractor


class Identity(nn.Module):
    """'Images' that already are feature vectors [B, F]."""

    num_features = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double()


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def test_matches_the_scipy_closed_form_on_gaussians():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 4, generator=g, dtype=torch.float64)
    mix = torch.tensor([[1.0, 0.3, 0, 0], [0, 2.0, 0, 0.5], [0, 0, 0.5, 0], [0.2, 0, 0, 1.0]], dtype=torch.float64)
    b = torch.randn(400, 4, generator=g, dtype=torch.float64) @ mix + torch.tensor([1.0, -0.5, 0.0, 2.0],
                                                                                    dtype=torch.float64)
    ours = frechet_distance([a[:250], a[250:]], [b], Identity())
    assert ours == pytest.approx(scipy_fid(a.numpy(), b.numpy()), rel=1e-6)
    assert ours > 5.0  # the mean shift alone gives 1 + 0.25 + 4


def test_small_extractor_tells_sets_apart():
    g = torch.Generator().manual_seed(0)
    dark = torch.rand(64, 3, 16, 16, generator=g) * 0.5
    dark2 = torch.rand(64, 3, 16, 16, generator=g) * 0.5
    bright = 0.5 + torch.rand(64, 3, 16, 16, generator=g) * 0.5
    extractor = small_extractor(16)
    same = frechet_distance([dark], [dark2], extractor)
    different = frechet_distance([dark], [bright], extractor)
    assert 0 <= same < 0.1 * different


def test_inception_needs_a_named_local_file(tmp_path):
    with pytest.raises(ValueError, match="needs a local weights file"):
        frechet_distance([torch.rand(2, 3, 8, 8)], [torch.rand(2, 3, 8, 8)])
    with pytest.raises(ValueError, match="does not exist"):
        frechet_distance([torch.rand(2, 3, 8, 8)], [torch.rand(2, 3, 8, 8)], inception_weights=tmp_path / "none.pth")
