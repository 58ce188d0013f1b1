"""Per-label heatmaps on the image (paper Figs. 9 / 11; drawn by :mod:`cxrfm.figures.heatmaps`).

* VTB: **attention rollout** from each label token to the image patches. Plain rollout (Abnar &
  Zuidema, 2020; ``weighting="none"``) averages each block's attention over heads, adds the
  identity for the residual path and multiplies the blocks; on trained models it gives nearly the
  same map for every label (a few "sink" tokens dominate every product). The default
  (``weighting="gradient"``) is the gradient-weighted rollout of Chefer et al. (2021): each block's
  attention ``A`` is replaced by ``mean_heads relu(dA_k ⊙ A)`` for logit ``k`` and accumulated
  as ``R <- R + Ā R``. Either way the image-only blocks give ``R (T, T)``, label ``k``'s row of
  the last (joint) block restricted to the image tokens is multiplied by it, and the patch
  entries of the result form the map.
* Pooled heads (linear probe, fine-tune): **Grad-CAM** on the last block's tokens: the gradient
  of logit ``k`` with respect to the tokens, averaged over the patches, weights the token channels;
  the ReLU of the weighted sum per patch is the map.

Maps are on the patch grid ``(gh, gw)``; :func:`label_heatmaps` upsamples them to the image size
and scales each to ``[0, 1]``.
"""

from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from cxrfm.models.classify.base import ClassifierBase
from cxrfm.models.classify.pooled import PooledClassifier
from cxrfm.models.classify.vtb import VTBClassifier


def attention_probabilities(block: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The softmax attention of ``block`` on ``tokens (B, T, D)``: ``(B, heads, T, T)``.

    Recomputed from the block's own weights because the fused attention kernel does not return it.
    """
    attention = block.attn
    qkv = rearrange(attention.qkv(block.norm1(tokens)), "b t (three h d) -> three b h t d", three=3, h=attention.num_heads)
    query, key = qkv[0], qkv[1]
    return torch.softmax(query @ key.transpose(-2, -1) * query.shape[-1] ** -0.5, dim=-1)


def _block_with_attention(block: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``block(tokens)`` written out with its attention ``(B, heads, T, T)`` in the graph."""
    attention = attention_probabilities(block, tokens)
    qkv = rearrange(block.attn.qkv(block.norm1(tokens)), "b t (three h d) -> three b h t d", three=3, h=block.attn.num_heads)
    mixed = block.attn.proj(rearrange(attention @ qkv[2], "b h t d -> b t (h d)"))
    tokens = tokens + block.drop_path(mixed)
    return tokens + block.drop_path(block.mlp(block.norm2(tokens))), attention


def vtb_attention_rollout(model: VTBClassifier, images: torch.Tensor, weighting: str = "gradient") -> torch.Tensor:
    """``(B, 1, H, W)`` -> ``(B, K, gh, gw)`` rollout from each label token to the image patches.

    ``weighting``: ``"gradient"`` (label-specific, Chefer et al.) or ``"none"`` (plain rollout).
    """
    if weighting not in ("gradient", "none"):
        raise ValueError(f"weighting must be 'gradient' or 'none', got {weighting!r}")
    encoder = model.encoder
    num_labels = model.num_labels
    with torch.enable_grad():
        # A leaf that requires grad: frozen blocks' attention then still enters the graph.
        tokens = encoder.embed(images).detach().requires_grad_(True)
        attentions = []
        for block in encoder.blocks[: model.depth - 1]:
            tokens, attention = _block_with_attention(block, tokens)
            attentions.append(attention)
        joint, attention = _block_with_attention(encoder.blocks[model.depth - 1], model.joint_sequence(tokens))
        attentions.append(attention)
        logits = model.logits_from_joint(encoder.norm(joint))  # (B, K); samples independent in eval mode
        if weighting == "none":
            relevances = [[a.detach().mean(dim=1) for a in attentions]] * num_labels
        else:
            relevances = []
            for k in range(num_labels):
                gradients = torch.autograd.grad(logits[:, k].sum(), attentions, retain_graph=True)
                relevances.append([torch.relu(g * a).mean(dim=1).detach() for g, a in zip(gradients, attentions)])
    maps = [_rollout_row(weighted, k, num_labels, plain=weighting == "none") for k, weighted in enumerate(relevances)]
    return _to_grid(torch.stack(maps, dim=1)[:, :, encoder.num_prefix_tokens :], encoder.config.grid_size)


def _rollout_row(weighted: list[torch.Tensor], label: int, num_labels: int, plain: bool) -> torch.Tensor:
    """Label ``label``'s relevance ``(B, T)`` over the image tokens from per-block ``(B, L, L)`` maps."""
    *image_blocks, last = weighted
    batch, length = image_blocks[0].shape[:2] if image_blocks else (last.shape[0], last.shape[1] - num_labels)
    identity = torch.eye(length, device=last.device, dtype=last.dtype)
    rollout = identity.expand(batch, -1, -1)
    for attention in image_blocks:
        if plain:  # Abnar & Zuidema: 0.5 A + 0.5 I, rows renormalised, multiplied
            mixed = 0.5 * attention + 0.5 * identity
            rollout = (mixed / mixed.sum(dim=-1, keepdim=True)) @ rollout
        else:  # Chefer et al.: R <- R + Ā R
            rollout = rollout + attention @ rollout
    return (last[:, label, num_labels:].unsqueeze(1) @ rollout).squeeze(1)


def pooled_gradcam(model: PooledClassifier, images: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` -> ``(B, K, gh, gw)`` Grad-CAM of each logit on the last block's tokens."""
    encoder = model.encoder
    with torch.no_grad():
        tokens = encoder.forward_blocks(encoder.embed(images))
    tokens = tokens.detach().requires_grad_(True)
    prefix = encoder.num_prefix_tokens
    with torch.enable_grad():
        logits = model.forward_head(tokens)  # (B, K); samples are independent in eval mode
        maps = []
        for k in range(logits.shape[1]):
            (gradient,) = torch.autograd.grad(logits[:, k].sum(), tokens, retain_graph=True)
            weights = gradient[:, prefix:].mean(dim=1, keepdim=True)  # (B, 1, D)
            maps.append(torch.relu((tokens[:, prefix:] * weights).sum(dim=-1)).detach())  # (B, N)
    return _to_grid(torch.stack(maps, dim=1), encoder.config.grid_size)


def _to_grid(maps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    return rearrange(maps, "b k (gh gw) -> b k gh gw", gh=grid[0], gw=grid[1])


def label_heatmaps(model: ClassifierBase, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps at image size and the probabilities they explain.

    Returns:
        ``heatmaps (B, K, H, W)`` in ``[0, 1]`` (each map scaled by its own maximum) and
        ``probabilities (B, K)``.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            probabilities = model.predict_proba(images)
        if isinstance(model, VTBClassifier):
            maps = vtb_attention_rollout(model, images)
        elif isinstance(model, PooledClassifier):
            maps = pooled_gradcam(model, images)
        else:
            raise TypeError(f"no heatmap method for {type(model).__name__}")
    finally:
        model.train(was_training)
    maps = F.interpolate(maps.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
    low = maps.amin(dim=(-2, -1), keepdim=True)
    high = maps.amax(dim=(-2, -1), keepdim=True)
    return (maps - low) / (high - low).clamp(min=1e-12), probabilities


def _numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().float().cpu().numpy()
    return np.asarray(array, dtype=np.float32)


__all__ = [
    "attention_probabilities",
    "label_heatmaps",
    "pooled_gradcam",
    "vtb_attention_rollout",
]
