"""Reconstruction error of autoencoding models (slot attention decoders, DEQ autoencoders)."""

from __future__ import annotations

import torch


def reconstruction_mse(images: torch.Tensor, recons: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error over all non-batch dimensions.

    Args:
        images: targets ``[B, ...]`` (e.g. ``[B, 3, H, W]``).
        recons: reconstructions of the same shape.

    Returns:
        ``Tensor[B]``, differentiable with respect to both inputs.
    """
    if images.shape != recons.shape:
        raise ValueError(f"images and recons must have the same shape, got {tuple(images.shape)} and {tuple(recons.shape)}")
    if images.ndim < 1:
        raise ValueError("reconstruction_mse needs a batch dimension, got a 0-d tensor")
    return (recons - images).pow(2).reshape(images.shape[0], -1).mean(dim=1)
