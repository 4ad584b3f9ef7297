"""The CPU a benchmark ran on, named precisely enough to tell two machines apart.

A cloud VM often reports its processor only as "AMD EPYC": under that one name, this project's 2-core machines have
been a Zen 4 and a Zen 5, and the best Fashion-MNIST recipe trains 1.7x faster on the second (1,848 vs 3,136
images/s in bf16, benchmarks/results/fashion_mnist.md). So the name carries the CPU family and model numbers, the
microarchitecture where they identify it, and the flags that decide the precision (native bf16 or not).
"""
from __future__ import annotations

import platform
from pathlib import Path

# (vendor, family) -> microarchitecture, or a function of the model number where one family spans two
_MICROARCHITECTURE = {
    ("AuthenticAMD", 23): lambda model: "Zen 2" if model >= 0x30 else "Zen",
    ("AuthenticAMD", 25): lambda model: "Zen 4" if 0x10 <= model < 0x20 or 0x60 <= model < 0x80 or model >= 0xa0
    else "Zen 3",
    ("AuthenticAMD", 26): lambda model: "Zen 5",
    ("GenuineIntel", 6): {85: "Skylake/Cascade Lake", 106: "Ice Lake", 143: "Sapphire Rapids",
                          207: "Emerald Rapids", 173: "Granite Rapids"}.get,
}


def first_processor(cpuinfo: str) -> dict[str, str]:
    """The fields of the first processor block of /proc/cpuinfo text."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if fields:  # the blank line that ends the first block
                break
            continue
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_name(cpuinfo: str | None = None) -> str:
    """E.g. 'AMD EPYC (family 26 model 2, Zen 5; avx512_bf16)' from /proc/cpuinfo (or the given text)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    fields = first_processor(cpuinfo)
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    details = []
    family, model = fields.get("cpu family", ""), fields.get("model", "")
    if family.isdigit() and model.isdigit():
        arch = _MICROARCHITECTURE.get((fields.get("vendor_id", ""), int(family)))
        arch_name = arch(int(model)) if arch else None
        details.append(f"family {family} model {model}" + (f", {arch_name}" if arch_name else ""))
    flags = fields.get("flags", "").split()
    native_bf16 = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    details.append(", ".join(native_bf16) if native_bf16 else "no native bf16")
    return f"{name} ({'; '.join(details)})"


if __name__ == "__main__":
    print(cpu_name())
