"""Counter-based random numbers keyed by (seed, epoch, sample) and RNG state capture for resume.

Per-sample randomness (which patches to mask, where to crop) is a pure function of
``(seed, epoch, sample_id, stream)``: the same sample in the same epoch gets the same numbers
whichever rank, batch position or worker handles it. That is what makes a 2-process run mask exactly
like a 1-process run, and a resumed run like an uninterrupted one. The numbers come from an integer
hash evaluated on the tensor's device (no per-sample Python loop, no generator objects), kept within
non-negative int64 arithmetic so CPU and GPU give identical bits.
"""

from __future__ import annotations

import random

import numpy as np
import torch

_MASK32 = 0xFFFFFFFF

# Stream ids keep different uses of the same (seed, epoch, sample) independent.
STREAM_MASKING = 1
STREAM_AUGMENT = 2
STREAM_FIGURE = 3


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """``(x * constant) mod 2**32`` for ``0 <= x < 2**32`` without int64 overflow."""
    low = x & 0xFFFF
    high = x >> 16
    return (low * constant + (((high * constant) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """The ``lowbias32`` integer finaliser (C. Wellons): every input bit flips ~half the output."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _combine(hashed: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Fold a 32-bit ``key`` (tensor, broadcastable to ``hashed``) into a running hash."""
    return _mix32(hashed ^ _mix32((key + 0x9E3779B9) & _MASK32))


def _fold_int(hashed: torch.Tensor, value: torch.Tensor | int) -> torch.Tensor:
    """Fold a non-negative integer of up to 64 bits (two 32-bit halves)."""
    if isinstance(value, int):
        value = torch.tensor(value & 0x7FFFFFFFFFFFFFFF, dtype=torch.int64, device=hashed.device)
    hashed = _combine(hashed, value & _MASK32)
    return _combine(hashed, (value >> 32) & _MASK32)


def hashed_uniform(
    sample_ids: torch.Tensor, count: int, *, seed: int, epoch: int, stream: int
) -> torch.Tensor:
    """Uniform ``[0, 1)`` numbers that depend only on their key.

    Args:
        sample_ids: ``(B,)`` non-negative int64 sample identifiers (dataset indices or hashed keys).
        count: numbers per sample.
        seed, epoch, stream: the rest of the key.

    Returns:
        ``(B, count)`` float32 on ``sample_ids.device`` with 24 random bits each.
    """
    sample_ids = sample_ids.to(torch.int64)
    device = sample_ids.device
    base = torch.zeros((), dtype=torch.int64, device=device)
    base = _fold_int(base, seed)
    base = _fold_int(base, epoch)
    base = _fold_int(base, stream)
    per_sample = _fold_int(base.expand_as(sample_ids), sample_ids)  # (B,)
    counters = torch.arange(count, dtype=torch.int64, device=device)  # (count,)
    bits = _combine(per_sample[:, None], counters[None, :])  # (B, count)
    bits = _mix32(bits ^ per_sample[:, None])
    return (bits >> 8).to(torch.float32) * (1.0 / (1 << 24))


def capture_rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) global RNG states as tensors and primitives.

    The result is safe for ``torch.save`` / ``torch.load(weights_only=True)`` (no pickled objects).
    """
    version, python_state, gauss_next = random.getstate()
    numpy_kind, numpy_keys, numpy_pos, numpy_has_gauss, numpy_cached = np.random.get_state()
    state = {
        "python_version": int(version),
        "python_state": torch.tensor(python_state, dtype=torch.int64),
        "python_gauss_next": gauss_next,
        "numpy_kind": str(numpy_kind),
        "numpy_keys": torch.from_numpy(np.asarray(numpy_keys, dtype=np.int64)),
        "numpy_pos": int(numpy_pos),
        "numpy_has_gauss": int(numpy_has_gauss),
        "numpy_cached_gaussian": float(numpy_cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict) -> None:
    """Undo :func:`capture_rng_state`: put every global RNG back where it was."""
    random.setstate((state["python_version"], tuple(state["python_state"].tolist()), state["python_gauss_next"]))
    np.random.set_state(
        (
            state["numpy_kind"],
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
