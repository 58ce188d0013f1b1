"""R2Gen's relational memory and memory-driven conditional layer norm (MCLN), plus attention.

The relational memory is a recurrence over the report's tokens: at step ``t`` the ``S`` memory
slots attend over themselves and the embedding of token ``t``, pass an MLP, and are mixed with the
previous memory through input/forget gates. Its state ``M_t`` (flattened to ``S * d``) conditions
every layer norm of the decoder at position ``t``: MCLN predicts ``Δγ`` and ``Δβ`` from ``M_t``.
Because ``M_t`` depends only on tokens ``<= t``, generation can carry ``M_{t-1}`` forward and
spend O(1) per new token on the memory (``RelationalMemory.step``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention with separate q/k/v/output projections.

    Keys/values are projected by :meth:`keys_values` so a caller can compute them once (encoder
    states during generation) or append to them (decoder self-attention cache).
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.1):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, "b t (h d) -> b h t d", h=self.num_heads)

    def keys_values(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, S, D)`` -> keys and values, each ``(B, H, S, D / H)``."""
        return self._split_heads(self.key(source)), self._split_heads(self.value(source))

    def attend(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """``query (B, Q, D)`` over projected ``keys/values (B, H, S, D/H)`` -> ``(B, Q, D)``.

        ``mask`` is boolean, True where a key may be attended, broadcastable to ``(B, H, Q, S)``.
        """
        queries = self._split_heads(self.query(query))
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=mask, dropout_p=dropout, is_causal=is_causal
        )
        return self.out(rearrange(out, "b h t d -> b t (h d)"))

    def forward(self, query: torch.Tensor, source: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        keys, values = self.keys_values(source)
        return self.attend(query, keys, values, mask)

    def self_attend(self, h: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor, int] | None = None) -> torch.Tensor:
        """Causal self-attention of ``h (B, Q, D)``; with ``cache = (keys, values, position)``
        (preallocated ``(B, H, capacity, D/H)`` buffers) the new token's keys/values are written at
        ``position`` and attention runs over ``[0, position]`` (Q must be 1)."""
        keys, values = self.keys_values(h)
        if cache is None:
            return self.attend(h, keys, values, is_causal=True)
        key_buffer, value_buffer, position = cache
        key_buffer[:, :, position : position + 1] = keys
        value_buffer[:, :, position : position + 1] = values
        return self.attend(h, key_buffer[:, :, : position + 1], value_buffer[:, :, : position + 1])


class RelationalMemory(nn.Module):
    """Gated relational memory with ``num_slots`` slots of width ``d_model`` (R2Gen: 3 × 512, 8 heads).

    State shape is ``(B, S * d)`` (flattened, as MCLN consumes it).
    """

    def __init__(self, num_slots: int, d_model: int, num_heads: int, dropout: float = 0.1):
        super().__init__()
        self.num_slots = num_slots
        self.d_model = d_model
        self.attention = MultiHeadAttention(d_model, num_heads, dropout)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, d_model), nn.ReLU()
        )
        # Input and forget gates from the new token (W) and the old memory (U), as in an LSTM.
        self.input_gates = nn.Linear(d_model, 2 * d_model)
        self.memory_gates = nn.Linear(d_model, 2 * d_model)

    def initial_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        """``(B, S * d)``: slot ``i`` starts as the one-hot vector ``e_i`` (zero-padded to ``d``)."""
        eye = torch.eye(self.num_slots, self.d_model, device=device, dtype=dtype)
        return eye.flatten().expand(batch_size, -1).clone()

    def step(self, token_embedding: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """One recurrence step: ``token_embedding (B, d)``, ``memory (B, S*d)`` -> ``(B, S*d)``."""
        slots = rearrange(memory, "b (s d) -> b s d", s=self.num_slots)
        token = token_embedding.unsqueeze(1)  # (B, 1, d)
        # Slots attend over [slots; token]: the memory reads the new word and itself.
        attended = slots + self.attention(slots, torch.cat([slots, token], dim=1))
        candidate = attended + self.mlp(attended)
        gates = self.input_gates(token) + self.memory_gates(torch.tanh(slots))  # (B, S, 2d)
        input_gate, forget_gate = torch.sigmoid(gates).chunk(2, dim=-1)
        updated = input_gate * torch.tanh(candidate) + forget_gate * slots
        return rearrange(updated, "b s d -> b (s d)")

    def forward(self, embeddings: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Run over a sequence: ``embeddings (B, L, d)`` from state ``memory (B, S*d)`` -> ``(B, L, S*d)``.

        Output ``t`` is the state after reading token ``t`` (what conditions decoder position ``t``).
        """
        states = []
        for position in range(embeddings.shape[1]):
            memory = self.step(embeddings[:, position], memory)
            states.append(memory)
        return torch.stack(states, dim=1)


class ConditionalLayerNorm(nn.Module):
    """MCLN: ``(γ + Δγ(M_t)) · norm(x) + (β + Δβ(M_t))`` with Δ's from two-layer MLPs of the memory.

    R2Gen normalises with ``(x - mean) / (std + eps)`` (unbiased std); this uses the standard layer
    norm (biased variance, eps under the square root), which differs only by O(1/d) in scale.
    """

    def __init__(self, d_model: int, memory_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(d_model))
        self.beta = nn.Parameter(torch.zeros(d_model))
        self.delta_gamma = nn.Sequential(nn.Linear(memory_size, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
        self.delta_beta = nn.Sequential(nn.Linear(memory_size, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # R2Gen's init: xavier weights, bias 0.1 in the Δ MLPs.
        for mlp in (self.delta_gamma, self.delta_beta):
            for layer in mlp:
                if isinstance(layer, nn.Linear):
                    nn.init.xavier_uniform_(layer.weight)
                    nn.init.constant_(layer.bias, 0.1)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """``x (B, L, d)``, ``memory (B, L, S*d)`` -> ``(B, L, d)``."""
        normed = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        gamma = self.gamma + self.delta_gamma(memory)
        beta = self.beta + self.delta_beta(memory)
        return gamma * normed + beta
