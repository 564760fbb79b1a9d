"""What the benchmarks print beside their figures: the device, and for generation the
memory-bandwidth bound of a decoding step.

A decoding step reads every weight once (whatever the batch size, up to the point where compute
takes over), so ``weight bytes / memory bandwidth`` is the least time a step can take and
``batch rows / that time`` the most tokens per second a batch can produce. The benchmarks print
their tokens/s as a fraction of that bound. The bound ignores the KV cache (reads that grow with
context length and batch) and the prompt pass, so real decoding stays below it; how far below is
the figure of merit.

Bandwidth: GPUs from the vendors' datasheet figures below (by the name torch reports), CPUs
measured here (a read-only pass over a 512 MiB buffer with the benchmark's thread count: what a
decoding step does with the weights), either one overridden by ``--bandwidth-gbs``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

# Peak memory bandwidth, GB/s (1e9 bytes/s), from the datasheets; the first name contained in
# torch.cuda.get_device_name() wins, so longer names come before their prefixes (L40S before L4).
GPU_BANDWIDTH_GBS: tuple[tuple[str, float], ...] = (
    ("H200", 4800.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),  # SXM5, "NVIDIA H100 80GB HBM3"
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100", 1555.0),  # 40 GB parts
    ("L40S", 864.0),
    ("A10G", 600.0),
    ("L4", 300.0),
    ("RTX 4090", 1008.0),
    ("V100", 900.0),
    ("T4", 320.0),
)


@dataclass(frozen=True)
class Bandwidth:
    gbs: float | None
    source: str  # "datasheet", "measured", "--bandwidth-gbs" or why there is none

    def describe(self) -> str:
        return f"{self.gbs:,.0f} GB/s ({self.source})" if self.gbs else f"bound not defined ({self.source})"


def device_name(device: str = "auto") -> str:
    """``"NVIDIA H100 80GB HBM3"`` or ``"cpu: AMD EPYC ... (2 cores)"``."""
    import torch

    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device if device.startswith("cuda") else "cuda"))
    from rlff_utils.report import cpu_model

    return f"cpu: {cpu_model()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def measure_read_bandwidth_gbs(mib: int = 512, repeats: int = 5) -> float:
    """Best of ``repeats`` read-only passes over a ``mib`` MiB float32 buffer (a sum), in GB/s."""
    import torch

    x = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
    x.sum()  # touch every page before timing
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


def bandwidth(device: str, override_gbs: float | None = None) -> Bandwidth:
    if override_gbs:
        return Bandwidth(override_gbs, "--bandwidth-gbs")
    if device.startswith("cuda"):
        name = device_name(device)
        for key, gbs in GPU_BANDWIDTH_GBS:
            if key in name:
                return Bandwidth(gbs, f"datasheet, {key}")
        return Bandwidth(None, f"{name!r} is not in bench/hardware.py's table: pass --bandwidth-gbs")
    return Bandwidth(round(measure_read_bandwidth_gbs(), 1), "measured: read-only pass over 512 MiB")


def weight_bytes_per_step(model) -> int:
    """Bytes of weights one decoding step reads: every parameter, except an input embedding table
    not shared with the output layer (a step looks up only its rows)."""
    params = {id(p): p for p in model.parameters()}
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    if out is None or out.weight is not emb:
        params.pop(id(emb), None)
    return sum(p.numel() * p.element_size() for p in params.values())


def weight_bytes_of(name: str, dtype) -> int:
    """:func:`weight_bytes_per_step` of registry model / folder / hub id ``name`` in ``dtype``,
    counted on the meta device (nothing is loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlff_utils.models import resolve_model

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve_model(name)), dtype=dtype)
    return weight_bytes_per_step(model)


def bound_line(tokens_per_s: float, rows: int, weight_bytes: int, bw: Bandwidth) -> str:
    """``"12.3 % of the bound (bound 1,234 tok/s at 32 rows)"`` or why there is no bound."""
    if not bw.gbs:
        return "bound not defined"
    bound = rows * bw.gbs * 1e9 / weight_bytes
    plural = "" if rows == 1 else "s"
    return f"{100 * tokens_per_s / bound:.1f} % of the bandwidth bound ({bound:,.0f} tok/s at {rows} row{plural})"


def sync(device) -> None:
    """Wait for queued GPU work, so wall-clock timings mean what they say."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
