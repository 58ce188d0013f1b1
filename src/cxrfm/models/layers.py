"""Transformer building blocks shared by the ViT encoder, the MAE decoder and later models.

Shapes use ``B`` batch, ``T`` tokens, ``D`` width, ``N`` patches, ``(gh, gw)`` the patch grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def sincos_pos_embed_2d(embed_dim: int, grid_size: tuple[int, int]) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings, as in MAE, for a ``(gh, gw)`` grid.

    Half of the channels encode the row, half the column; each half is ``[sin(p·ω), cos(p·ω)]``
    with ``ω_k = 1 / 10000^(k / (D/4))`` for ``k = 0 .. D/4 - 1``. MAE (and the HD X-ray MAE
    reference) put the *column* coordinate in the first half and the row in the second, because
    ``np.meshgrid`` returns ``w`` first; we keep that order so weights stay interchangeable.

    Args:
        embed_dim: ``D``, divisible by 4.
        grid_size: ``(gh, gw)``.

    Returns:
        ``(gh·gw, D)`` float32, row-major over the grid (token ``i`` = row ``i // gw``,
        column ``i % gw``), matching the patch order of :class:`PatchEmbed`.
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"sin-cos position embeddings need a width divisible by 4, got {embed_dim}")
    grid_h, grid_w = grid_size
    rows = torch.arange(grid_h, dtype=torch.float64)
    cols = torch.arange(grid_w, dtype=torch.float64)
    row_of_token = rows.repeat_interleave(grid_w)  # (N,)
    col_of_token = cols.repeat(grid_h)  # (N,)
    return torch.cat(
        [_sincos_1d(embed_dim // 2, col_of_token), _sincos_1d(embed_dim // 2, row_of_token)], dim=1
    ).float()


def _sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """``(N,)`` positions -> ``(N, embed_dim)`` as ``[sin(p·ω), cos(p·ω)]``."""
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega  # (D/2,)
    angles = positions[:, None] * omega[None, :]  # (N, D/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def interpolate_pos_embed(
    pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], num_prefix_tokens: int
) -> torch.Tensor:
    """Resample learned position embeddings to another patch grid (bicubic, as timm/MAE do).

    Args:
        pos_embed: ``(1, P + gh·gw, D)`` with ``P = num_prefix_tokens`` (class token) first.
        old_grid: ``(gh, gw)`` the embeddings were trained on.
        new_grid: ``(gh', gw')`` to produce.

    Returns:
        ``(1, P + gh'·gw', D)``; the prefix (class-token) embeddings are kept unchanged.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    prefix, grid_tokens = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    grid_tokens = rearrange(grid_tokens, "1 (gh gw) d -> 1 d gh gw", gh=old_grid[0], gw=old_grid[1])
    # Bicubic in float32: half precision bicubic is not implemented on every device.
    grid_tokens = F.interpolate(
        grid_tokens.float(), size=tuple(new_grid), mode="bicubic", align_corners=False
    ).to(pos_embed.dtype)
    grid_tokens = rearrange(grid_tokens, "1 d gh gw -> 1 (gh gw) d")
    return torch.cat([prefix, grid_tokens], dim=1)


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for whole samples with probability ``p``.

    Like dropout it draws from the device's global RNG rather than a passed generator: it is a
    regulariser inside the model, seeded by ``seed_everything``, and its draws carry no meaning.
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        keep = x.new_empty(shape).bernoulli_(keep_prob)
        # Rescale so the expected output equals the input at evaluation time.
        return x * keep / keep_prob

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` (flash/mem-efficient)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``(B, T, D)``; ``attn_mask``: optional boolean ``(B, 1|H, T, T)`` (True = attend)."""
        qkv = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.num_heads)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)  # (B, H, T, hd)
        return self.proj(rearrange(out, "b h t d -> b t (h d)"))


class Mlp(nn.Module):
    """Two-layer GELU feed-forward network: ``D -> hidden -> D``."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``(B, T, D)`` -> ``(B, T, D)``."""
        x = x + self.drop_path(self.attn(self.norm1(x), attn_mask=attn_mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping ``(ph, pw)`` patches -> ``D``-wide tokens (a strided conv = one linear map).

    Input ``(B, C, H, W)`` with ``H % ph == W % pw == 0``; output ``(B, (H/ph)·(W/pw), D)`` in
    row-major grid order.
    """

    def __init__(self, patch_size: tuple[int, int], in_channels: int, embed_dim: int):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return rearrange(self.proj(images), "b d gh gw -> b (gh gw) d")

    def init_weights(self) -> None:
        # MAE initialises the patch projection like the nn.Linear it is equivalent to.
        _xavier_as_linear(self.proj)


class ConvStem(nn.Module):
    """The HD X-ray MAE reference stem: two strided convs with ReLUs, then a 1×1 projection.

    For a ``(ph, pw)`` patch: conv ``(ph/4, pw/4)`` stride ``(ph/4, pw/4)`` (C -> D) -> ReLU ->
    conv 4×4 stride 4 (D -> D) -> ReLU -> conv 1×1 (D -> D). With 64×64 patches this is exactly
    the reference's conv16×16 s16 -> conv4×4 s4 -> 1×1 (hidden width = ``D``). Each token still sees
    exactly one ``(ph, pw)`` patch, so masking and patchify stay patch-aligned.
    """

    def __init__(self, patch_size: tuple[int, int], in_channels: int, embed_dim: int):
        super().__init__()
        patch_h, patch_w = patch_size
        if patch_h % 4 or patch_w % 4:
            raise ValueError(f"conv_stem needs patch sides divisible by 4, got patch_size={tuple(patch_size)}")
        first = (patch_h // 4, patch_w // 4)
        self.patch_size = (patch_h, patch_w)
        self.conv1 = nn.Conv2d(in_channels, embed_dim, kernel_size=first, stride=first)
        self.conv2 = nn.Conv2d(embed_dim, embed_dim, kernel_size=4, stride=4)
        self.proj = nn.Conv2d(embed_dim, embed_dim, kernel_size=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(images))
        x = F.relu(self.conv2(x))
        return rearrange(self.proj(x), "b d gh gw -> b (gh gw) d")

    def init_weights(self) -> None:
        # The reference leaves conv1/conv2 at PyTorch's default init and xavier-initialises proj;
        # we treat all three as the linear maps they are, which keeps activations O(1) at depth.
        for conv in (self.conv1, self.conv2, self.proj):
            _xavier_as_linear(conv)


def _xavier_as_linear(conv: nn.Conv2d) -> None:
    weight = conv.weight.data
    nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def init_transformer_weights(module: nn.Module) -> None:
    """MAE's init for ``module.apply``: xavier-uniform Linear with zero bias; LayerNorm 1 / 0."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
