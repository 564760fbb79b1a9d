"""Seeds tied to the identity of the work, and sampling whose draws belong to the row, not the batch.

:func:`derive_seed` is the project's one seed function: every sample, vote, split and draw takes
its seed from the identity of what it belongs to (the run seed, the trajectory key, the turn, the
role), never from a position in a batch or a global generator, so a resumed run writes what an
uninterrupted one writes.

The hf backend's sampler: transformers' sampling draws every row of a batch from one random generator, so what a
conversation says depends on which conversations share its batch and in which order. Here each
row (one sample of one conversation) has its own ``torch.Generator``, seeded from the
conversation's seed and the sample's index; a Gumbel-max draw over the warped logits is exactly a
draw from their softmax. Used as the last logits processor of a greedy ``generate``, so the
argmax transformers takes is that draw.
"""

from __future__ import annotations

import hashlib
from typing import Any


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any parts (run seed, trajectory key, turn, role): same parts,
    same seed, on every machine and in every process."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index`` of a conversation seeded ``seed`` (63 bits)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest(), "little") >> 1


class RowSampler:
    """A logits processor: temperature and top-p (transformers' warper), then one Gumbel-max draw
    per row from that row's generator (``seeds``: one per row, in the batch's row order)."""

    def __init__(self, temperature: float, top_p: float, seeds: list[int], device):
        import torch
        from transformers import TopPLogitsWarper

        if temperature <= 0:
            raise ValueError("RowSampler samples: temperature must be > 0 (greedy decoding needs no sampler)")
        self.temperature = temperature
        self.top_p = TopPLogitsWarper(top_p) if top_p < 1.0 else None
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def __call__(self, input_ids, scores):
        import torch

        if scores.shape[0] != len(self.generators):
            raise RuntimeError(f"RowSampler: {scores.shape[0]} rows for {len(self.generators)} seeds")
        scores = scores.float() / self.temperature
        if self.top_p is not None:
            scores = self.top_p(input_ids, scores)
        u = torch.stack([torch.rand(scores.shape[1], generator=g, device=scores.device) for g in self.generators])
        return scores - torch.log(-torch.log(u.clamp_min(1e-30)))  # + Gumbel noise: argmax = a softmax draw
