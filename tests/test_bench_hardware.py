"""bench/hardware.py: the device's bandwidth and the weight bytes a decoding step reads, from which
the benchmarks print tokens/s as a fraction of the memory-bandwidth bound."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from rlff_utils import models


@pytest.fixture(scope="module")
def hardware(project_root):
    spec = importlib.util.spec_from_file_location("bench_hardware", project_root / "bench" / "hardware.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_gpu_bandwidth_comes_from_the_table_by_name(hardware, monkeypatch):
    for name, gbs in [("NVIDIA H100 80GB HBM3", 3350), ("NVIDIA H100 PCIe", 2000), ("NVIDIA H200", 4800),
                      ("NVIDIA L40S", 864), ("NVIDIA L4", 300), ("NVIDIA A100-SXM4-80GB", 2039)]:
        monkeypatch.setattr(hardware, "device_name", lambda device, n=name: n)
        assert hardware.bandwidth("cuda").gbs == gbs, name
    monkeypatch.setattr(hardware, "device_name", lambda device: "Some Future GPU")
    unknown = hardware.bandwidth("cuda:0")
    assert unknown.gbs is None and "--bandwidth-gbs" in unknown.describe()
    assert hardware.bound_line(100.0, 8, 10**9, unknown) == "bound not defined"
    assert hardware.bandwidth("cuda", override_gbs=1234.0).describe() == "1,234 GB/s (--bandwidth-gbs)"


def test_cpu_bandwidth_is_measured(hardware):
    bw = hardware.bandwidth("cpu")
    assert bw.source.startswith("measured") and 0.1 < bw.gbs < 10_000
    assert hardware.device_name("cpu").startswith("cpu: ")


def test_weight_bytes_and_the_bound(hardware, tiny_model_path, shaped_cache):
    import torch

    tiny, _ = models.load_causal_lm("tiny-random-smollm2", device="cpu", dtype="float32")
    # tied embeddings: the output layer reads the whole table once per step
    assert hardware.weight_bytes_per_step(tiny) == 4 * sum(p.numel() for p in tiny.parameters())
    # untied (the Qwen2.5-7B shape): the input table's lookups read a few rows, not counted
    qwen = hardware.weight_bytes_of("shaped-qwen2.5-7b@narrow=16", torch.bfloat16)
    cfg = models.shaped_config("shaped-qwen2.5-7b@narrow=16")
    assert qwen == 2 * (models.count_parameters(cfg) - cfg.vocab_size * cfg.hidden_size)
    bw = hardware.Bandwidth(10.0, "test")  # 10 GB/s over 1 GB of weights: 10 steps/s, 80 tok/s at 8 rows
    assert hardware.bound_line(20.0, 8, 10**9, bw) == "25.0 % of the bandwidth bound (80 tok/s at 8 rows)"
    assert hardware.bound_line(5.0, 1, 10**9, bw).endswith("(10 tok/s at 1 row)")


def test_generation_bench_times_the_fast_paths_as_ratios(project_root, tiny_model_path, tmp_path, capsys):
    """bench_generation on the tiny model: both kv_cache settings, the LoRA adapter unmerged and
    merged, each later variant printed as a ratio to the first, every row in the JSON."""
    import json

    spec = importlib.util.spec_from_file_location("bench_generation", project_root / "bench" / "bench_generation.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "gen.json"
    assert bench.main(["--model", "tiny-random-smollm2", "--device", "cpu", "--batch-sizes", "1,2",
                       "--prompt-tokens", "24", "--new-tokens", "16", "--kv-cache", "dynamic,static",
                       "--lora-r", "4", "--lora-merged", "--bandwidth-gbs", "10", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    variants = [r["variant"] for r in result["rows"]]
    assert variants == [v for v in ("kv_cache=dynamic, lora unmerged", "kv_cache=dynamic, lora merged",
                                    "kv_cache=static, lora unmerged", "kv_cache=static, lora merged") for _ in (1, 2)]
    assert all(r["backend_tokens"] > 0 and r["decode_ms_per_step"] > 0 for r in result["rows"])
    printed = capsys.readouterr().out
    assert printed.count(" vs kv_cache=dynamic, lora unmerged, batch ") == 6 and "of the bandwidth bound" in printed
