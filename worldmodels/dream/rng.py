"""Counter-based random numbers: one independent stream per dream member, drawn for all members at once.

A member's numbers at step t are a hash of (seed, stream id, episode, t, index), computed with int64
tensor ops on the device. So member b of a batched dream draws exactly what a single dream with the
same seed and stream id b draws, whatever the batch size, with no per-member Python loop, and the
same seed gives the same numbers on CPU and GPU. Values are kept in [0, 2^32) so every product fits
in a signed int64 (no overflow), and the 32-bit mixer below is a bijection with good avalanche.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
_MIX = 0x45D9F3B
_GOLDEN = 0x9E3779B9
_STEP_SALT = 0x85EBCA6B
_EPISODE_SALT = 0xC2B2AE35


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash of int64 values in [0, 2^32), elementwise."""
    x = ((x >> 16) ^ x) * _MIX & MASK32
    x = ((x >> 16) ^ x) * _MIX & MASK32
    return (x >> 16) ^ x


def stream_keys(seed: int, stream_ids: torch.Tensor) -> torch.Tensor:
    """Per-member keys (B,) int64 from a seed (any int) and stream ids (B,)."""
    lo, hi = seed & MASK32, (seed >> 32) & MASK32
    return mix32(mix32((stream_ids & MASK32) ^ lo) ^ mix32(torch.full_like(stream_ids, hi ^ _GOLDEN)))


def episode_keys(keys: torch.Tensor, episodes: torch.Tensor) -> torch.Tensor:
    """Keys for each member's current episode (episodes (B,) int64 counters)."""
    return mix32(keys ^ mix32((episodes + _EPISODE_SALT) & MASK32))


def index_keys(n: int, device: torch.device | str) -> torch.Tensor:
    """Keys (n,) for the n numbers drawn per member per step."""
    return mix32(torch.arange(n, device=device, dtype=torch.int64) * _GOLDEN & MASK32)


UNIFORM_BITS = 23  # (2^23 - 1) + 0.5 is exact in float32; with 24 bits the top value rounds up to u = 1.0


def bits_to_uniform(bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Integers in [0, 2^UNIFORM_BITS) -> floats strictly inside (0, 1), in any float dtype (float32 too)."""
    return (bits.to(dtype) + 0.5) * (1.0 / (1 << UNIFORM_BITS))


def uniforms(keys: torch.Tensor, t: torch.Tensor, idx_keys: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Uniforms (B, n) strictly in (0, 1), for members with episode keys (B,) at their step t (B,).

    Never exactly 0 or 1: the dream turns them into normals with erfinv/ndtri, which are infinite there.
    """
    step_keys = mix32(keys ^ mix32((t + _STEP_SALT) & MASK32))  # (B,)
    bits = mix32(step_keys.unsqueeze(1) ^ idx_keys.unsqueeze(0)) >> (32 - UNIFORM_BITS)  # (B, n)
    return bits_to_uniform(bits, dtype)
