"""Benchmarks tell machines apart: two CPUs that report the same model name get different machine lines
(benchmarks/cpuinfo.py), and the Fashion-MNIST report never averages seeds measured on two CPUs."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fashion_mnist  # noqa: E402
from cpuinfo import cpu_name  # noqa: E402


def cpuinfo(vendor: str, family: int, model: int, name: str, flags: str) -> str:
    block = (f"processor\t: {{}}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
             f"model name\t: {name}\nflags\t\t: fpu sse2 avx2 {flags}\n\n")
    return block.format(0) + block.format(1).replace(name, "not the first processor")


def test_same_model_name_different_generations():
    zen4 = cpu_name(cpuinfo("AuthenticAMD", 25, 17, "AMD EPYC", "avx512f avx512_bf16"))
    zen5 = cpu_name(cpuinfo("AuthenticAMD", 26, 2, "AMD EPYC", "avx512f avx512_bf16"))
    assert zen4 == "AMD EPYC (family 25 model 17, Zen 4; avx512_bf16)"
    assert zen5 == "AMD EPYC (family 26 model 2, Zen 5; avx512_bf16)"


def test_intel_with_amx_and_a_cpu_without_native_bf16():
    spr = cpu_name(cpuinfo("GenuineIntel", 6, 143, "Intel(R) Xeon(R) Platinum 8480+", "amx_bf16 avx512_bf16"))
    assert spr == "Intel(R) Xeon(R) Platinum 8480+ (family 6 model 143, Sapphire Rapids; amx_bf16, avx512_bf16)"
    milan = cpu_name(cpuinfo("AuthenticAMD", 25, 1, "AMD EPYC 7763 64-Core Processor", ""))
    assert milan == "AMD EPYC 7763 64-Core Processor (family 25 model 1, Zen 3; no native bf16)"
    unknown = cpu_name(cpuinfo("GenuineIntel", 6, 999, "Some Xeon", ""))
    assert unknown == "Some Xeon (family 6 model 999; no native bf16)"


def test_no_family_fields():
    assert cpu_name("model name\t: Apple M2\n").startswith("Apple M2 (no native bf16")


ZEN4, ZEN5 = "AMD EPYC (family 25 model 17, Zen 4; avx512_bf16)", "AMD EPYC (family 26 model 2, Zen 5; avx512_bf16)"


def fashion_row(seed: int, cpu: str, test_accuracy: float) -> dict:
    final = {"test_accuracy": test_accuracy, "val_accuracy": test_accuracy + 0.005, "train_seconds": 300.2,
             "throughput": 3000.0, "parameters": 280220, "epochs": 17.5}
    return {"recipe": "best", "precision": "bf16", "seed": seed, "overrides": [], "config": "configs/x.yaml",
            "final": final, "per_epoch": [{"epoch": 17.5, "train_seconds": 300.2, "val_accuracy": 0.945}],
            "machine": {"cpu": cpu, "torch": "2.13.0", "threads": 2, "date": "2026-12-02 11:00",
                        "load_average_start": ["1", "1", "1"]}}


def test_fashion_report_keeps_machines_apart():
    runs = [fashion_row(s, ZEN4, 0.936) for s in range(3)] + [fashion_row(s, ZEN5, 0.942) for s in range(3)]
    rows = [line for line in fashion_mnist.markdown(None, runs, "x.png").splitlines() if line.startswith("| best")]
    assert len(rows) == 2  # one group per CPU, not one mean over six seeds
    zen4, zen5 = (next(r for r in rows if cpu in r) for cpu in (ZEN4, ZEN5))
    assert "**0.9360**" in zen4 and zen4.endswith("| no (accuracy) |")
    assert "**0.9420**" in zen5 and zen5.endswith("| yes |")
    # a re-measured seed replaces only its own CPU's row
    assert fashion_mnist.run_key(runs[0]) != fashion_mnist.run_key(runs[3])
    assert fashion_mnist.run_key(runs[3]) == fashion_mnist.run_key(fashion_row(0, ZEN5, 0.95))


def test_fashion_target_needs_three_seeds():
    rows = [line for line in fashion_mnist.markdown(None, [fashion_row(0, ZEN5, 0.95)], "x.png").splitlines()
            if line.startswith("| best")]
    assert rows[0].endswith("| no (1 of 3 seeds) |")
