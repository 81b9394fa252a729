"""Batched GMRES against dense solves: the reported residual is the true one, per sample."""

from __future__ import annotations

import pytest
import torch

from deqkit.linear import GMRES


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("restart", [8, 20])
def test_gmres_solves_block_diagonal_systems(dtype, tol, restart):
    gen = torch.Generator().manual_seed(0)
    batch, dim = 16, 8
    jac = 0.6 * torch.randn(batch, dim, dim, generator=gen, dtype=dtype) / dim**0.5
    a = torch.eye(dim, dtype=dtype) - jac.transpose(1, 2)
    b = torch.randn(batch, dim, generator=gen, dtype=dtype)
    matvec = lambda v: torch.einsum("bij,bj->bi", a, v)  # noqa: E731
    x, info = GMRES(restart=restart).solve(matvec, b, tol=tol, max_iter=200)
    true = torch.linalg.vector_norm(b - matvec(x), dim=1) / torch.linalg.vector_norm(b, dim=1)
    torch.testing.assert_close(info.residual, true)
    assert info.converged.all() and (true <= tol).all()
    expected = torch.linalg.solve(a, b)
    assert (torch.linalg.vector_norm(x - expected, dim=1) / torch.linalg.vector_norm(expected, dim=1)).max() < 100 * tol


def test_gmres_exhausted_krylov_space_stays_exact():
    b = torch.randn(3, 5, dtype=torch.float64)
    x, info = GMRES().solve(lambda v: 2 * v, b, tol=1e-12, max_iter=20)
    torch.testing.assert_close(x, b / 2)
    assert (info.nfe == 2).all()  # one Arnoldi step and one product for the reported (true) residual
