"""Reusable modules (deqkit.nn): the slot attention step is the paper's update, its gradients match their
definitions under every estimator, it is permutation equivariant, and the encoder/decoders keep their
contracts (shapes, masks that partition each pixel, positions in a slot's own frame)."""

from __future__ import annotations

import pytest
import torch

from deqkit import FixedPoint
from deqkit.backward import IFT, Neumann
from deqkit.nn import (CNNEncoder, MLPBroadcastDecoder, SlotAttention, SlotAttentionStep, SpatialBroadcastDecoder,
                       alpha_composite, position_grid, slot_frames)

torch.set_num_threads(1)
B, N, D, K, S = 2, 10, 12, 4, 8


def _module(backward: str = "unrolled", iters: int = 3) -> SlotAttention:
    torch.manual_seed(0)
    return SlotAttention(K, D, S, mlp_hidden=16, iters=iters, backward=backward).double()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(B, N, D, generator=gen, dtype=torch.float64),
            torch.randn(B, K, S, generator=gen, dtype=torch.float64))


def _manual_step(step: SlotAttentionStep, slots, k, v):
    """The update written out independently: softmax over slots, weighted mean over inputs, GRU, MLP."""
    q = step.to_q(step.norm_slots(slots))
    logits = (q @ k.transpose(1, 2)) / S**0.5  # [B,K,N]
    attn = torch.softmax(logits, dim=1) + step.eps
    attn = attn / attn.sum(-1, keepdim=True)
    updates = attn @ v
    gru = step.gru
    x, h = updates.reshape(-1, S), slots.reshape(-1, S)
    gi, gh = x @ gru.weight_ih.T + gru.bias_ih, h @ gru.weight_hh.T + gru.bias_hh
    r = torch.sigmoid(gi[:, :S] + gh[:, :S])
    z = torch.sigmoid(gi[:, S:2 * S] + gh[:, S:2 * S])
    n = torch.tanh(gi[:, 2 * S:] + r * gh[:, 2 * S:])
    new = ((1 - z) * n + z * h).reshape(B, K, S)
    return new + step.mlp(step.norm_mlp(new))


def test_shapes_and_attention_normalisation():
    sa = _module()
    inputs, _ = _inputs()
    slots, attn, info = sa(inputs)
    assert slots.shape == (B, K, S) and attn.shape == (B, K, N)
    torch.testing.assert_close(attn.sum(-1), torch.ones(B, K, dtype=attn.dtype))
    assert info.nfe.tolist() == [3, 3]


def test_step_is_the_paper_update_and_fixed_point_is_the_loop():
    sa = _module(iters=4)
    inputs, slots0 = _inputs()
    x = sa.norm_inputs(inputs)
    k, v = sa.to_k(x), sa.to_v(x)
    expected = slots0
    for _ in range(4):
        expected = _manual_step(sa.step, expected, k, v)
    torch.testing.assert_close(sa.step(slots0, k, v), _manual_step(sa.step, slots0, k, v))
    slots, _, _ = sa(inputs, slots0)
    torch.testing.assert_close(slots, expected)
    fp = FixedPoint(sa.step, solver="iteration", backward="unrolled", tol=None, max_iter=4)
    torch.testing.assert_close(fp(slots0, k, v)[0], expected)


def test_neumann_gradient_is_one_step_from_detached_slots():
    sa = _module(backward="neumann", iters=3)
    inputs, slots0 = _inputs()
    inputs.requires_grad_(True)
    slots, _, _ = sa(inputs, slots0)
    grads = torch.autograd.grad(slots.square().sum(), [inputs, *sa.parameters()], allow_unused=True)

    x = sa.norm_inputs(inputs)
    k, v = sa.to_k(x), sa.to_v(x)
    with torch.no_grad():
        z = slots0
        for _ in range(3):
            z = sa.step(z, k, v)
    oracle = sa.step(z.detach(), k, v)
    torch.testing.assert_close(slots, oracle)
    expected = torch.autograd.grad(oracle.square().sum(), [inputs, *sa.parameters()], allow_unused=True)
    for got, want in zip(grads, expected):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want)
    assert grads[1 + [n for n, _ in sa.named_parameters()].index("mu")] is None  # the start is detached


def test_unrolled_gradient_differs_from_neumann_and_reaches_the_initialisation():
    inputs, slots0 = _inputs()
    unrolled, neumann = _module("unrolled"), _module("neumann")
    g_u = torch.autograd.grad(unrolled(inputs)[0].sum(), unrolled.mu)[0]
    assert g_u.abs().sum() > 0
    p_u = torch.autograd.grad(unrolled(inputs, slots0)[0].sum(), unrolled.step.to_q.weight)[0]
    p_n = torch.autograd.grad(neumann(inputs, slots0)[0].sum(), neumann.step.to_q.weight)[0]
    assert not torch.allclose(p_u, p_n)


def test_permutation_equivariance_over_slots_and_invariance_over_inputs():
    sa = _module()
    inputs, slots0 = _inputs()
    slots, attn, _ = sa(inputs, slots0)
    perm_k, perm_n = torch.randperm(K), torch.randperm(N)
    slots_p, attn_p, _ = sa(inputs, slots0[:, perm_k])
    torch.testing.assert_close(slots_p, slots[:, perm_k])
    torch.testing.assert_close(attn_p, attn[:, perm_k])
    slots_n, attn_n, _ = sa(inputs[:, perm_n], slots0)
    torch.testing.assert_close(slots_n, slots)
    torch.testing.assert_close(attn_n, attn[:, :, perm_n])


def test_learned_queries_get_the_output_gradient_under_neumann_and_the_exact_one_unrolled():
    torch.manual_seed(0)
    inputs, _ = _inputs()
    neumann = SlotAttention(K, D, S, mlp_hidden=16, iters=3, backward="neumann", init="learned").double()
    unrolled = SlotAttention(K, D, S, mlp_hidden=16, iters=3, backward="unrolled", init="learned").double()
    unrolled.load_state_dict(neumann.state_dict())
    slots_n, _, _ = neumann(inputs)
    slots_u, _, _ = unrolled(inputs)
    x = neumann.norm_inputs(inputs)
    direct, _ = neumann.fixed_point(neumann.initial_slots(B), neumann.to_k(x), neumann.to_v(x))
    torch.testing.assert_close(slots_n, direct)  # the straight-through term is zero in value
    weight = torch.randn_like(slots_n)
    g_n = torch.autograd.grad((slots_n * weight).sum(), neumann.queries)[0]
    torch.testing.assert_close(g_n, weight.sum(0, keepdim=True))  # identity: dL/dslots summed over the batch
    # unrolled: the exact derivative of the loop, checked against finite differences of the queries
    g_u = torch.autograd.grad((slots_u * weight).sum(), unrolled.queries)[0]
    direction = torch.randn_like(unrolled.queries)
    with torch.no_grad():
        eps, q = 1e-6, unrolled.queries.clone()
        unrolled.queries.copy_(q + eps * direction)
        plus = (unrolled(inputs)[0] * weight).sum()
        unrolled.queries.copy_(q - eps * direction)
        minus = (unrolled(inputs)[0] * weight).sum()
        unrolled.queries.copy_(q)
    torch.testing.assert_close((g_u * direction).sum(), (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-8)
    assert not torch.allclose(g_u, g_n)


def test_learned_queries_start_every_image_from_the_same_distinct_slots():
    torch.manual_seed(0)
    sa = SlotAttention(K, D, S, init="learned")
    start = sa.initial_slots(3)
    torch.testing.assert_close(start[0], start[2])
    assert torch.cdist(start[0], start[0]).fill_diagonal_(1.0).min() > 0
    assert not hasattr(sa, "mu")
    with pytest.raises(ValueError, match="unknown init"):
        SlotAttention(K, D, S, init="zeros")


def test_mlp_decoder_first_layer_is_the_concatenated_per_position_mlp():
    """W_s slot + W_p position must equal one linear layer of [slot, position] at every grid position."""
    torch.manual_seed(0)
    dec = MLPBroadcastDecoder(slot_dim=6, channels=5, size=8, grid=4).double()
    slots = torch.randn(2, 3, 6, dtype=torch.float64)
    grid = position_grid(4, 4).double()  # [4,4,4]
    concat = torch.cat([slots[:, :, None, None, :].expand(-1, -1, 4, 4, -1),
                        grid.expand(2, 3, -1, -1, -1)], dim=-1)  # [B,K,4,4,6+4]
    weight = torch.cat([dec.slot_in.weight, dec.pos_in.weight], dim=1)
    hidden = torch.relu(dec.hidden(torch.relu(concat @ weight.T + dec.slot_in.bias)))
    expected = dec.out(hidden.flatten(0, 1).permute(0, 3, 1, 2)).reshape(2, 3, 4, 8, 8)
    rgb, alpha = dec(slots)
    torch.testing.assert_close(torch.cat([rgb, alpha], dim=2), expected)
    assert MLPBroadcastDecoder(6, 5, size=8, grid=8)(slots.float())[0].shape == (2, 3, 3, 8, 8)  # no upsampling
    with pytest.raises(ValueError, match="power of 2"):
        MLPBroadcastDecoder(6, 5, size=12, grid=8)


def test_given_start_slots_get_no_straight_through_gradient():
    """Only the learned queries are trained straight through; a caller's own start stays detached."""
    torch.manual_seed(0)
    sa = SlotAttention(K, D, S, mlp_hidden=16, backward="neumann", init="learned").double()
    inputs, slots0 = _inputs()
    slots0.requires_grad_(True)
    out, _, _ = sa(inputs, slots0)
    assert torch.autograd.grad(out.sum(), slots0, allow_unused=True)[0] is None


def test_slot_frames_are_the_attention_weighted_mean_and_spread_of_positions():
    attn = torch.zeros(1, 2, 16)  # a 4x4 grid of inputs, positions (y, x) in {0, 1/3, 2/3, 1}
    attn[0, 0, 5] = 1.0  # one input: row 1, column 1
    attn[0, 1, [0, 1, 4, 5]] = 0.25  # the top-left 2x2 block
    centre, spread = slot_frames(attn, 4, 4)
    torch.testing.assert_close(centre[0, 0], torch.tensor([1 / 3, 1 / 3]))
    torch.testing.assert_close(spread[0, 0], torch.tensor([0.01, 0.01]))  # clamped: no zero division
    torch.testing.assert_close(centre[0, 1], torch.tensor([1 / 6, 1 / 6]))
    torch.testing.assert_close(spread[0, 1], torch.tensor([1 / 6, 1 / 6]))


def test_relative_decoder_moves_a_slot_s_drawing_with_its_centre():
    """In the slot's own frame, moving the centre by whole grid cells shifts the picture by as many cells."""
    torch.manual_seed(0)
    dec = MLPBroadcastDecoder(slot_dim=6, channels=8, size=12, grid=12, relative=True).double()
    slots = torch.randn(1, 2, 6, dtype=torch.float64)
    cell = 1 / 11  # grid spacing of 12 positions over [0, 1]
    centre = torch.tensor([[[4 * cell, 5 * cell], [6 * cell, 3 * cell]]], dtype=torch.float64)
    spread = torch.full((1, 2, 2), 0.2, dtype=torch.float64)
    rgb, alpha = dec(slots, (centre, spread))
    shifted_rgb, shifted_alpha = dec(slots, (centre + torch.tensor([2 * cell, 3 * cell]).double(), spread))
    torch.testing.assert_close(shifted_alpha[..., 2:, 3:], alpha[..., :-2, :-3])
    torch.testing.assert_close(shifted_rgb[..., 2:, 3:], rgb[..., :-2, :-3])
    with pytest.raises(ValueError, match="needs the slots' frames"):
        dec(slots)


def test_cnn_encoder_gives_one_feature_per_remaining_pixel():
    encoder = CNNEncoder(channels=6, layers=3, kernel=3, downsample=2)
    assert encoder(torch.rand(2, 3, 16, 16)).shape == (2, 16, 6)  # 16x16 / 4^2 positions
    assert CNNEncoder(channels=6, layers=2, kernel=3, in_channels=1)(torch.rand(1, 1, 8, 8)).shape == (1, 64, 6)


@pytest.mark.parametrize("full_res_convs", [0, 1])
def test_spatial_broadcast_decoder_draws_each_slot_at_full_size(full_res_convs):
    dec = SpatialBroadcastDecoder(slot_dim=6, channels=5, size=16, grid=4, full_res_convs=full_res_convs)
    rgb, alpha = dec(torch.randn(2, 3, 6))
    assert rgb.shape == (2, 3, 3, 16, 16) and alpha.shape == (2, 3, 1, 16, 16)


def test_alpha_composite_is_the_softmax_mixture_over_slots():
    rgb, alpha = torch.rand(2, 3, 3, 4, 4), torch.randn(2, 3, 1, 4, 4)
    image, masks = alpha_composite(rgb, alpha)
    weights = alpha.exp() / alpha.exp().sum(1, keepdim=True)
    torch.testing.assert_close(masks, weights.squeeze(2))
    torch.testing.assert_close(image, (weights * rgb).sum(1))


@pytest.mark.parametrize("backward", [Neumann(1), IFT(tol=1e-12)])
def test_implicit_gradient_of_a_converged_slot_attention_matches_the_dense_oracle(backward):
    """At a fixed point reached by the solver, IFT equals the dense (I - J)^-1 oracle and Neumann(1) equals
    the one-step formula: the module's gradient is the estimator's, not something of its own."""
    torch.manual_seed(0)
    sa = SlotAttention(K, D, S, mlp_hidden=16, iters=200, solver="anderson", backward=backward, tol=1e-12,
                       init="learned").double()
    with torch.no_grad():  # a contractive step, so the fixed point exists and the solver reaches it
        for p in sa.step.parameters():
            p.mul_(0.3)
    inputs, _ = _inputs()
    slots, _, info = sa(inputs)
    assert bool(info.converged.all())
    weight = torch.randn_like(slots)
    params = list(sa.step.parameters())
    grads = torch.autograd.grad((slots * weight).sum(), params)
    x = sa.norm_inputs(inputs)
    k, v = sa.to_k(x).detach(), sa.to_v(x).detach()
    z = slots.detach()
    f = lambda s: sa.step(s, k, v)  # noqa: E731
    jac = torch.autograd.functional.jacobian(f, z).reshape(z.numel(), z.numel())
    u = weight.reshape(-1)
    if isinstance(backward, IFT):  # uᵀ(I - J)^-1 ∂f/∂θ
        u = torch.linalg.solve((torch.eye(z.numel(), dtype=z.dtype) - jac).T, u)
    expected = torch.autograd.grad(f(z), params, u.reshape_as(z))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


def test_slot_masks_are_the_softmax_over_slots_of_the_attention():
    torch.manual_seed(0)
    sa = SlotAttention(4, 8, slot_dim=8, mlp_hidden=8, iters=2)
    inputs = torch.randn(2, 10, 8)
    slots, attn, _ = sa(inputs)
    masks = sa.masks(inputs, slots)
    torch.testing.assert_close(masks.sum(1), torch.ones(2, 10))
    # the attention used by the update is the same weights renormalised over the inputs (up to eps)
    torch.testing.assert_close(masks / masks.sum(-1, keepdim=True), attn, atol=1e-6, rtol=1e-5)


def test_layer_norm_eps_option_reaches_every_layer_norm_and_changes_the_output():
    torch.manual_seed(0)
    ref = SlotAttention(K, D, S, mlp_hidden=16, layer_norm_eps=1e-3).double()
    torch.manual_seed(0)
    default = SlotAttention(K, D, S, mlp_hidden=16).double()
    norms = [m for m in ref.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 3 and all(m.eps == 1e-3 for m in norms)
    assert all(m.eps == 1e-5 for m in default.modules() if isinstance(m, torch.nn.LayerNorm))
    # inputs of small spread, where the epsilon under the square root matters
    inputs, slots = _inputs()
    inputs = 0.01 * inputs
    out_ref, out_default = ref(inputs, slots)[0], default(inputs, slots)[0]
    assert not torch.allclose(out_ref, out_default, atol=1e-3)
    # the same eps given to torch's LayerNorm by hand reproduces the option's input normalisation
    by_hand = torch.nn.functional.layer_norm(inputs, (D,), ref.norm_inputs.weight, ref.norm_inputs.bias, eps=1e-3)
    torch.testing.assert_close(ref.norm_inputs(inputs), by_hand)


def test_gaussian_init_options_draw_from_their_distributions():
    import math

    from deqkit.nn.slot_attention import keras_glorot_uniform_

    slot_dim = 4096  # many draws per parameter vector
    torch.manual_seed(0)
    normal = SlotAttention(K, D, slot_dim, mlp_hidden=8, gaussian_init="normal")
    glorot = SlotAttention(K, D, slot_dim, mlp_hidden=8, gaussian_init="keras_glorot")
    bound = math.sqrt(6 / (1 + slot_dim))  # Keras' fans of a [1, 1, S] weight: 1 and S
    for p in (glorot.mu, glorot.log_sigma):
        assert p.abs().max() <= bound and p.abs().max() > 0.95 * bound
        assert p.var().item() == pytest.approx(bound**2 / 3, rel=0.1)  # variance of U(-b, b)
    assert normal.mu.std().item() == pytest.approx(1.0, rel=0.1)
    assert normal.log_sigma.abs().max() <= math.sqrt(3 / slot_dim)  # torch's xavier_uniform_ fans: S and S
    xavier = SlotAttention(K, D, slot_dim, mlp_hidden=8, gaussian_init="torch_xavier")  # SLATE's code
    for p in (xavier.mu, xavier.log_sigma):
        assert math.sqrt(3 / slot_dim) * 0.95 < p.abs().max() <= math.sqrt(3 / slot_dim)
    # Keras' fans on a 4-d convolution kernel [h, w, in, out]: receptive field h*w
    kernel = keras_glorot_uniform_(torch.empty(3, 3, 200, 300))
    assert kernel.abs().max() <= math.sqrt(6 / (9 * 500)) and kernel.abs().max() > 0.95 * math.sqrt(6 / (9 * 500))
    with pytest.raises(Exception, match="gaussian_init"):
        SlotAttention(K, D, S, gaussian_init="zeros")


def test_iterate_gives_the_fixed_points_iterates_from_the_same_noise():
    sa = _module("unrolled", iters=3)
    inputs, _ = _inputs()
    noise = torch.randn(B, K, S, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    slots, attn, _ = sa(inputs, noise=noise)
    start = sa.initial_slots(B, noise)
    torch.testing.assert_close(sa.iterate(inputs, start, 3), slots)
    # one step from the second iterate is the third; a different draw gives different slots
    torch.testing.assert_close(sa.iterate(inputs, sa.iterate(inputs, start, 2), 1), slots)
    assert not torch.allclose(sa(inputs, noise=noise + 1)[0], slots)
