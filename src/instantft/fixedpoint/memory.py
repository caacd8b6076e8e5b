"""On-chip memory of the InstantFT core for given formats: the resource estimate an FPGA engineer
starts from (bits per buffer, before mapping to BRAM/URAM).

What is counted follows §4.1: the frozen parameters and the adapters are pre-loaded on chip; the
five adapter modules update at once, so all their gradients are held together; the buffers hold
one mini-batch of layer inputs, logits, adapter projections and deltas (the output gradient is
copied into the delta buffers, so it takes no extra space); the two softmax ROMs; and one batch of
NF4 cache entries on their way to or from DRAM. Not counted: the Forward Cache itself (in DRAM),
the conv line buffers and any duplication from array partitioning (both depend on the unrolling).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from instantft.fixedpoint.formats import FixedPointConfig
from instantft.fixedpoint.nf4_codec import entry_bits


@dataclass(frozen=True)
class Buffer:
    name: str
    values: int
    bits_per_value: float
    note: str

    @property
    def bits(self) -> int:
        return round(self.values * self.bits_per_value)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bits": self.bits, "bytes": -(-self.bits // 8)}


def memory_estimate(
    config: FixedPointConfig, network: Any = "lenet5-mnist", rank: int = 4, batch_size: int = 20
) -> dict[str, Any]:
    """Bits and bytes per on-chip buffer, and the total, for ``config``'s formats; ``network`` is
    an in-tree architecture's name or a :class:`~instantft.backbones.Backbone`."""
    from instantft.backbones import as_backbone
    from instantft.models import build

    backbone = as_backbone(build(network)) if isinstance(network, str) else network
    named = getattr(getattr(backbone.model, "config", None), "name", None)
    arch = network if isinstance(network, str) else named or type(backbone.model).__name__
    classes = backbone.num_classes
    ins = list(backbone.sizes)
    act, par = config.act.bits, config.param.bits
    frozen = sum(p.numel() for p in backbone.model.parameters())
    adapters = sum(rank * (d + classes) for d in ins)
    cache_width = sum(backbone.cache_sizes)
    k = len(ins)
    buffers = [
        Buffer("frozen parameters", frozen, par, "weights and biases of the frozen layers"),
        Buffer("adapter weights A, B", adapters, par, f"{k} skip adapters, rank r"),
        Buffer("adapter gradients dA, dB", adapters, par, "all five adapters update at once"),
        Buffer(f"layer inputs x0..x{k - 1}", batch_size * sum(ins), act, "one mini-batch"),
        Buffer("logits f(x), y, probabilities", batch_size * 3 * classes, act, "one mini-batch"),
        Buffer("adapter projections h_k", batch_size * k * rank, act, "one mini-batch"),
        Buffer("adapter deltas / output gradient", batch_size * k * classes, act, "g is copied into the delta buffers"),
        Buffer("back-projected gradients g·B_k", batch_size * k * rank, par, "one mini-batch"),
        Buffer("softmax tables (exp, reciprocal)", 2 * config.softmax_table_size, act, "ROMs"),
        Buffer(
            "NF4 cache entries",
            batch_size,
            entry_bits(cache_width, config.act),
            f"one mini-batch of {cache_width}-value rows: 4-bit codes + one absmax word per 64",
        ),
    ]
    total = sum(b.bits for b in buffers)
    return {
        "architecture": arch,
        "formats": config.to_dict(),
        "rank": rank,
        "batch_size": batch_size,
        "buffers": [b.to_dict() for b in buffers],
        "total_bits": total,
        "total_bytes": -(-total // 8),
        "forward_cache_dram_bytes_per_sample": entry_bits(cache_width, config.act) / 8,
    }


def memory_markdown(estimate: dict[str, Any]) -> str:
    """The estimate as a Markdown table."""
    f = estimate["formats"]
    lines = [
        f"On-chip memory, {estimate['architecture']}, activations {f['act_format']}, parameters and gradients "
        f"{f['param_format']}, rank {estimate['rank']}, batch {estimate['batch_size']}:",
        "",
        "| buffer | values | bits/value | bits | bytes | note |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for b in estimate["buffers"]:
        cells = [b["name"], f"{b['values']:,}", f"{b['bits_per_value']:g}", f"{b['bits']:,}", f"{b['bytes']:,}"]
        lines.append("| " + " | ".join([*cells, b["note"]]) + " |")
    lines.append(
        f"| **total** | | | **{estimate['total_bits']:,}** | **{estimate['total_bytes']:,}** "
        f"| {estimate['total_bits'] / 1e6:.2f} Mbit |"
    )
    return "\n".join(lines) + "\n"
