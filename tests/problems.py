"""Small fixed-point problems and a dense implicit-function-theorem oracle shared by the core tests."""

from __future__ import annotations

import torch

from deqkit.pytree import flat_map, spec_of


def contractive_matrix(dim: int, norm: float, *, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """A Gaussian matrix scaled to spectral norm ``norm`` (so tanh(Wz + x) is a contraction for norm < 1)."""
    w = torch.randn(dim, dim, generator=generator, dtype=dtype)
    return w * (norm / torch.linalg.matrix_norm(w, 2))


def dense_ift_grads(f, z_star, params, v):
    """Exact dℓ/dparams for ℓ = Σ⟨v, z*⟩ by the IFT with dense per-sample Jacobians.

    ``f`` maps a state to a state, ``z_star`` a converged state, ``v`` a state of cotangents.
    """
    spec = spec_of(z_star)
    f_flat = flat_map(f, spec)
    z = spec.flatten(z_star).detach()
    v_flat = spec.flatten(v)
    jac = torch.autograd.functional.jacobian(f_flat, z)  # [B, D, B, D]
    batch = z.shape[0]
    eye = torch.eye(z.shape[1], dtype=z.dtype)
    g = torch.stack([torch.linalg.solve((eye - jac[b, :, b, :]).T, v_flat[b]) for b in range(batch)])
    z_in = z.clone().requires_grad_()
    return torch.autograd.grad(f_flat(z_in), params, g)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())
