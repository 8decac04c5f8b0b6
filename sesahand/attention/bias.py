"""Cross-attention with a constant bias on hand tokens (eq. AE-1).

    M_cross = softmax(Q K^T / sqrt(d) + B),   B[q, k] = alpha if k in I else 0      (eq. AE-1)

computed by ``torch.nn.functional.scaled_dot_product_attention`` with a float mask, which is
added to the logits before the softmax. The optional query weights (beyond the paper, off by
default) scale the bias per query pixel, so that only queries inside the hand region favour
the hand tokens: ``B[q, k] = alpha * w[q]`` for ``k`` in I.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: The bias the paper found best (1.0 too weak, 2.5 adds noise).
DEFAULT_ALPHA = 2.0
#: Accepted range of alpha.
ALPHA_RANGE = (0.0, 10.0)


def check_alpha(alpha: float) -> float:
    """``alpha`` as a float if it is a finite number in :data:`ALPHA_RANGE`.

    Raises:
        ValueError: naming ``alpha`` and its range.
    """
    low, high = ALPHA_RANGE
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        value = math.nan
    if not low <= value <= high:
        raise ValueError(f"alpha must be a number from {low:g} to {high:g} (the paper's best is "
                         f"{DEFAULT_ALPHA:g}; 0 turns the bias off), got {alpha!r}")
    return value


def biased_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                     key_bias: torch.Tensor, query_weight: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """Multi-head attention with a bias on the logits of chosen keys (eq. AE-1).

    Args:
        q: queries ``(B, Nq, heads * d)`` (image tokens, already projected).
        k, v: keys and values ``(B, Nk, heads * d)`` (text tokens, already projected).
        heads: number of heads.
        key_bias: ``(Nk,)`` or ``(1 or B, Nk)``: added to the logits of every query for
            that key (``HandTokens.key_bias``).
        query_weight: optional ``(Nq,)`` or ``(1 or B, Nq)`` factors in [0, 1] on the bias
            per query (:func:`hand_query_weights`); ``None``: every query gets the full bias.

    Returns:
        ``(B, Nq, heads * d)`` in ``q``'s dtype: ``softmax(Q K^T / sqrt(d) + B) V`` per head,
        heads concatenated (the layout ComfyUI's and diffusers' attention functions return).

    Raises:
        ValueError: shapes that do not fit together.
    """
    b, nq, inner = q.shape
    nk = k.shape[1]
    if inner % heads or k.shape != (b, nk, inner) or v.shape != (b, nk, inner):
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not fit "
                         f"{heads} heads")
    bias = key_bias.to(device=q.device, dtype=q.dtype).reshape(-1, key_bias.shape[-1])
    if bias.shape[-1] != nk or bias.shape[0] not in (1, b):
        raise ValueError(f"key_bias {tuple(key_bias.shape)} does not fit {b} x {nk} keys")
    if query_weight is None:
        mask = bias[:, None, None, :]
    else:
        weight = query_weight.to(device=q.device, dtype=q.dtype).reshape(-1, query_weight.shape[-1])
        if weight.shape[-1] != nq or weight.shape[0] not in (1, b):
            raise ValueError(f"query_weight {tuple(query_weight.shape)} does not fit "
                             f"{b} x {nq} queries")
        mask = (weight[:, :, None] * bias[:, None, :])[:, None]
    d = inner // heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, nq, inner)


def hand_query_weights(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A hand mask at a layer's token grid: the hand's share of every grid cell.

    Args:
        mask: ``(H, W)`` or ``(M, H, W)`` float in [0, 1] (1 = hand), image resolution.
        height, width: the layer's token grid (latent size divided by the layer's stride).

    Returns:
        ``(M, height * width)`` float32 in [0, 1], row-major like the layer's query tokens.
    """
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise ValueError(f"mask must be (H, W) or (M, H, W), got {tuple(mask.shape)}")
    cells = F.interpolate(mask[:, None].float(), size=(height, width), mode="area")
    return cells.flatten(1).clamp(0.0, 1.0)


def joint_key_bias(key_bias: torch.Tensor, num_tokens: int, *, text_start: int, image_start: int,
                   image_tokens: int, query_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. AE-1's bias for joint text-image attention (Flux, SD3): one sequence of
    ``num_tokens`` tokens attends to itself, the text tokens at ``[text_start, text_start + Nt)``
    and the image tokens at ``[image_start, image_start + image_tokens)``; the bias is added to
    the logits of image queries on the hand-token text keys only (text queries, other image
    tokens such as reference latents, and every other key get 0).

    Args:
        key_bias: ``(Nt,)`` the text's bias row (``HandTokens.key_bias``).
        num_tokens: ``N``, the joint sequence length.
        text_start, image_start, image_tokens: the layout (see above).
        query_weight: optional ``(M, image_tokens)`` factors in [0, 1] per image query
            (:func:`hand_query_weights` on the patch grid); ``None``: the full bias everywhere.

    Returns:
        ``(1 or M, 1, N, N)`` additive attention mask in ``key_bias``'s dtype and device,
        broadcastable over heads (the layout of SDPA's ``attn_mask``).

    Raises:
        ValueError: a layout that does not fit in ``num_tokens`` or overlaps.
    """
    text = key_bias.shape[-1]
    if not (0 <= text_start and text_start + text <= image_start
            and image_start + image_tokens <= num_tokens):
        raise ValueError(f"text [{text_start}, {text_start + text}) and image [{image_start}, "
                         f"{image_start + image_tokens}) do not fit a sequence of {num_tokens}")
    rows = 1 if query_weight is None else query_weight.shape[0]
    mask = key_bias.new_zeros((rows, 1, num_tokens, num_tokens))
    image = slice(image_start, image_start + image_tokens)
    keys = slice(text_start, text_start + text)
    if query_weight is None:
        mask[:, 0, image, keys] = key_bias
    else:
        if query_weight.shape[-1] != image_tokens:
            raise ValueError(f"query_weight {tuple(query_weight.shape)} does not fit "
                             f"{image_tokens} image tokens")
        weight = query_weight.to(device=key_bias.device, dtype=key_bias.dtype)
        mask[:, 0, image, keys] = weight[:, :, None] * key_bias
    return mask
