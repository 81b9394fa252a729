"""deqkit.nn.transformer: the image-GPT decoder is causal, ignores the order of its memory, and its cached
autoregressive decoding gives exactly the tokens (and logits) of decoding without the cache."""

from __future__ import annotations

import pytest
import torch

from deqkit.nn import ImageGPT, TransformerDecoder

torch.set_num_threads(1)


def _gpt(seed: int = 0) -> ImageGPT:
    torch.manual_seed(seed)
    return ImageGPT(vocab_size=11, num_tokens=9, d_model=16, num_heads=4, num_blocks=2, dropout=0.1).eval()


def test_logits_at_t_depend_only_on_earlier_tokens():
    gpt = _gpt()
    tokens = torch.randint(0, 11, (2, 9))
    memory = torch.randn(2, 3, 16)
    logits = gpt(tokens, memory)
    assert logits.shape == (2, 9, 11)
    changed = tokens.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 11
    after = gpt(changed, memory)
    torch.testing.assert_close(after[:, :6], logits[:, :6])  # token 5 is seen first by position 6
    assert (after[:, 6:] - logits[:, 6:]).abs().max() > 1e-4


def test_memory_is_a_set():
    gpt = _gpt()
    tokens, memory = torch.randint(0, 11, (2, 9)), torch.randn(2, 4, 16)
    torch.testing.assert_close(gpt(tokens, memory[:, [2, 0, 3, 1]]), gpt(tokens, memory))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cached_generation_equals_uncached_greedy_decoding(seed):
    gpt = _gpt(seed)
    memory = torch.randn(3, 4, 16) * 3
    cached, uncached = gpt.generate(memory, use_cache=True), gpt.generate(memory, use_cache=False)
    assert cached.shape == (3, 9)
    assert torch.equal(cached, uncached)
    # and greedy: each generated token is the argmax of the teacher-forced logits of the sequence itself
    assert torch.equal(gpt(cached, memory).argmax(-1), cached)


def test_cache_grows_by_one_position_per_step():
    dec = TransformerDecoder(8, 2, 2).eval()
    memory, x = torch.randn(1, 3, 8), torch.randn(1, 5, 8)
    cache = dec.new_cache()
    steps = [dec(x[:, t:t + 1], memory, cache) for t in range(5)]
    assert all(c["k"].shape[2] == 5 for c in cache)
    torch.testing.assert_close(torch.cat(steps, dim=1), dec(x, memory), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="one new position"):
        dec(x[:, :2], memory, cache)


def test_parallel_decoder_ignores_the_tokens_and_generates_in_one_pass():
    torch.manual_seed(0)
    gpt = ImageGPT(vocab_size=11, num_tokens=9, d_model=16, num_heads=4, num_blocks=2, context_dropout=1.0).eval()
    memory = torch.randn(2, 3, 16)
    a, b = torch.randint(0, 11, (2, 9)), torch.randint(0, 11, (2, 9))
    torch.testing.assert_close(gpt(a, memory), gpt(b, memory))  # only positions and the memory are seen
    assert (gpt(a, memory) - gpt(a, memory.roll(1, dims=0))).abs().max() > 1e-4
    tokens = gpt.generate(memory)
    assert tokens.shape == (2, 9) and torch.equal(tokens, gpt(a, memory).argmax(-1))


def test_context_dropout_hides_tokens_in_training_only():
    torch.manual_seed(0)
    gpt = ImageGPT(vocab_size=11, num_tokens=9, d_model=16, num_heads=4, num_blocks=2, context_dropout=0.5)
    tokens, memory = torch.randint(0, 11, (64, 9)), torch.randn(64, 3, 16)
    torch.manual_seed(1)
    hide = gpt.train().hidden_context(tokens)
    assert 0.4 < hide.float().mean() < 0.6
    torch.manual_seed(1)  # the same draw: training logits are those of the tokens with the hidden ones masked
    torch.testing.assert_close(gpt(tokens, memory), gpt.eval()(tokens.masked_fill(hide, gpt.mask_id), memory))
    assert gpt.hidden_context(tokens) is None  # eval mode sees every token
    with pytest.raises(ValueError, match="context_dropout"):
        ImageGPT(11, 9, 16, 4, 1, context_dropout=1.5)


def test_mlp_activation_option():
    relu = ImageGPT(8, 4, 16, 2, 2, activation="relu")
    assert sum(isinstance(m, torch.nn.ReLU) for m in relu.modules()) == 2
    assert not any(isinstance(m, torch.nn.GELU) for m in relu.modules())
    assert sum(isinstance(m, torch.nn.GELU) for m in ImageGPT(8, 4, 16, 2, 2).modules()) == 2
    with pytest.raises(ValueError, match="activation"):
        ImageGPT(8, 4, 16, 2, 1, activation="swish")
