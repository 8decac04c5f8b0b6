"""Eq. AE-1: biased cross-attention through SDPA, against an explicit softmax."""

from __future__ import annotations

import math

import pytest
import torch

from sesahand.attention import biased_attention, check_alpha, hand_query_weights, joint_key_bias

B, NQ, NK, HEADS, D = 2, 24, 77, 4, 8


def explicit_attention(q, k, v, heads, bias):
    """softmax(Q K^T / sqrt(d) + bias) V per head, bias (B or 1, Nq or 1, Nk), in float64."""
    b, nq, inner = q.shape
    d = inner // heads
    q, k, v = (t.double().reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    logits = q @ k.transpose(-1, -2) / math.sqrt(d) + bias.double()[:, None]
    out = logits.softmax(-1) @ v
    return out.transpose(1, 2).reshape(b, nq, inner)


@pytest.fixture
def qkv():
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(B, n, HEADS * D, generator=g) for n in (NQ, NK, NK))


def hand_bias(alpha, positions=(3, 8, 9)):
    row = torch.zeros(NK)
    row[list(positions)] = alpha
    return row


def test_matches_the_explicit_softmax(qkv):
    q, k, v = qkv
    bias = hand_bias(2.0)
    out = biased_attention(q, k, v, HEADS, bias)
    assert out.shape == (B, NQ, HEADS * D) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), explicit_attention(q, k, v, HEADS, bias[None, None]),
                               atol=1e-5, rtol=1e-5)


def test_zero_bias_is_plain_attention(qkv):
    q, k, v = qkv
    out = biased_attention(q, k, v, HEADS, torch.zeros(NK))
    heads = (t.reshape(B, -1, HEADS, D).transpose(1, 2) for t in qkv)
    plain = torch.nn.functional.scaled_dot_product_attention(*heads)
    plain = plain.transpose(1, 2).reshape(B, NQ, -1)
    torch.testing.assert_close(out, plain, atol=1e-6, rtol=1e-6)


def test_bias_moves_attention_to_the_hand_tokens(qkv):
    q, k, v = qkv
    k = k.clone()
    v = v.clone()
    v[:, 8] = 10.0  # one hand token with a value no other key has
    weights = [biased_attention(q, k, v, HEADS, hand_bias(alpha, (8,))).mean().item()
               for alpha in (0.0, 1.0, 2.0, 4.0, 30.0)]
    assert weights == sorted(weights)  # more bias, more weight on the hand token's value
    assert weights[-1] == pytest.approx(10.0, abs=1e-3)  # all attention on it


def test_per_batch_bias_rows(qkv):
    q, k, v = qkv
    rows = torch.stack([hand_bias(2.0), torch.zeros(NK)])
    out = biased_attention(q, k, v, HEADS, rows)
    for i, row in enumerate(rows):
        one = slice(i, i + 1)
        torch.testing.assert_close(out[one], biased_attention(q[one], k[one], v[one], HEADS, row))


def test_query_weights_scale_the_bias_per_query(qkv):
    q, k, v = qkv
    weight = torch.zeros(NQ)
    weight[:10] = 1.0
    weight[10] = 0.5
    out = biased_attention(q, k, v, HEADS, hand_bias(2.0), weight)
    expected = explicit_attention(q, k, v, HEADS, (weight[:, None] * hand_bias(2.0))[None])
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    plain = biased_attention(q, k, v, HEADS, torch.zeros(NK))
    torch.testing.assert_close(out[:, 11:], plain[:, 11:], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(out[:, :10], plain[:, :10], atol=1e-3)


def test_half_precision(qkv):
    q, k, v = (t.half() for t in qkv)
    out = biased_attention(q, k, v, HEADS, hand_bias(2.0))
    assert out.dtype == torch.float16
    expected = explicit_attention(q, k, v, HEADS, hand_bias(2.0)[None, None])
    torch.testing.assert_close(out.double(), expected, atol=5e-3, rtol=5e-3)


def test_shape_errors(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="heads"):
        biased_attention(q, k, v, 5, torch.zeros(NK))
    with pytest.raises(ValueError, match="key_bias"):
        biased_attention(q, k, v, HEADS, torch.zeros(NK + 1))
    with pytest.raises(ValueError, match="query_weight"):
        biased_attention(q, k, v, HEADS, torch.zeros(NK), torch.ones(NQ + 1))


def test_hand_query_weights_are_the_hand_share_of_each_cell():
    mask = torch.zeros(2, 64, 48)
    mask[0, :, :24] = 1.0  # left half
    mask[1, :16, :] = 1.0  # top quarter
    w = hand_query_weights(mask, 4, 3)
    assert w.shape == (2, 12)
    torch.testing.assert_close(w[0].reshape(4, 3), torch.tensor([[1.0, 0.5, 0.0]] * 4))
    torch.testing.assert_close(w[1].reshape(4, 3), torch.tensor([[1.0] * 3] + [[0.0] * 3] * 3))
    assert hand_query_weights(mask[0], 8, 6).shape == (1, 48)
    with pytest.raises(ValueError, match="mask"):
        hand_query_weights(torch.zeros(1, 1, 8, 8), 4, 4)


@pytest.mark.parametrize("alpha", [-0.1, 10.5, float("nan"), float("inf"), "two", None])
def test_alpha_out_of_range(alpha):
    with pytest.raises(ValueError, match="alpha must be a number from 0 to 10"):
        check_alpha(alpha)


def test_alpha_in_range():
    assert check_alpha(0) == 0.0 and check_alpha(2) == 2.0 and check_alpha(10.0) == 10.0


def test_joint_key_bias_lands_on_image_queries_and_hand_keys_only():
    row = torch.zeros(5)
    row[[1, 3]] = 2.0
    # [2 registers][5 text][3x2 image][2 reference tokens]
    mask = joint_key_bias(row, 15, text_start=2, image_start=7, image_tokens=6)
    assert mask.shape == (1, 1, 15, 15)
    expected = torch.zeros(15, 15)
    expected[7:13, 3] = expected[7:13, 5] = 2.0
    assert torch.equal(mask[0, 0], expected)
    weight = torch.tensor([[1.0, 0.5, 0.0, 0.0, 0.0, 1.0], [0.0] * 6])
    weighted = joint_key_bias(row, 15, text_start=2, image_start=7, image_tokens=6,
                              query_weight=weight)
    assert weighted.shape == (2, 1, 15, 15) and weighted[1].abs().sum() == 0
    assert weighted[0, 0, 7:13, 3].tolist() == [2.0, 1.0, 0.0, 0.0, 0.0, 2.0]
    with pytest.raises(ValueError, match="do not fit"):
        joint_key_bias(row, 12, text_start=2, image_start=7, image_tokens=6)
    with pytest.raises(ValueError, match="query_weight"):
        joint_key_bias(row, 15, text_start=2, image_start=7, image_tokens=6,
                       query_weight=torch.ones(1, 5))


def test_joint_bias_through_sdpa_is_eq_ae1_on_image_queries():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 11, 8, generator=g) for _ in range(3))  # 4 text, 7 image
    row = torch.tensor([0.0, 2.0, 0.0, 2.0])
    mask = joint_key_bias(row, 11, text_start=0, image_start=4, image_tokens=7)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out[:, :, :4], plain[:, :, :4])  # text queries unchanged
    logits = q @ k.transpose(-1, -2) / math.sqrt(8)
    logits[:, :, 4:, [1, 3]] += 2.0
    torch.testing.assert_close(out, logits.softmax(-1) @ v)
