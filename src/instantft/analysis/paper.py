"""The paper's Table 1 (Sugiura & Matsutani 2025, §2), as printed: the one place its numbers live.

Used only as the reference column of ``instantft table1`` and for the differences; every number
we report is computed from the model (:mod:`instantft.analysis.costs`).
"""

from __future__ import annotations

from dataclasses import dataclass

#: the rank Table 1 was computed at (LoRA-Last = 4·(84 + 10) = 376 parameters)
PAPER_RANK = 4

#: how the paper names our registry's methods
PAPER_NAMES: dict[str, str] = {
    "ft-all": "FT-All",
    "ft-last": "FT-Last",
    "ft-bias": "FT-Bias",
    "lora-all": "LoRA-All",
    "lora-last": "LoRA-Last",
    "skip-lora": "Skip-LoRA",
    "skip2-lora": "Skip2-LoRA",
    "instantft": "InstantFT",
}


@dataclass(frozen=True)
class PaperRow:
    """One printed row: parameters exactly, FLOPs in millions to 3 decimals, memory in KB to 1."""

    trainable_params: int
    forward_mflops: float
    backward_mflops: float
    memory_kb: float

    @property
    def forward_flops(self) -> int:
        return round(self.forward_mflops * 1e6)

    @property
    def backward_flops(self) -> int:
        return round(self.backward_mflops * 1e6)

    @property
    def memory_bytes(self) -> int:
        return round(self.memory_kb * 1000)


# fmt: off
PAPER_TABLE1: dict[str, dict[str, PaperRow]] = {  # paper Table 1, per dataset network
    "mnist": {                                      # paper, MNIST columns
        "ft-all":    PaperRow(61706, 0.851, 1.444, 567.8),  # paper
        "ft-last":   PaperRow(850,   0.851, 0.002, 285.8),  # paper
        "ft-bias":   PaperRow(236,   0.851, 0.611, 322.0),  # paper
        "lora-all":  PaperRow(36328, 0.923, 0.743, 611.8),  # paper
        "lora-last": PaperRow(376,   0.852, 0.001, 285.4),  # paper
        "instantft": PaperRow(10456, 0.872, 0.036, 366.2),  # paper
    },
    "svhn": {                                       # paper, SVHN columns
        "ft-all":    PaperRow(62006, 1.321, 1.914, 579.4),  # paper
        "ft-last":   PaperRow(850,   1.321, 0.002, 296.1),  # paper
        "ft-bias":   PaperRow(236,   1.321, 0.611, 332.3),  # paper
        "lora-all":  PaperRow(45480, 1.412, 0.762, 695.4),  # paper
        "lora-last": PaperRow(376,   1.322, 0.001, 295.8),  # paper
        "instantft": PaperRow(19608, 1.360, 0.054, 449.8),  # paper
    },
}
# fmt: on


def paper_row(dataset: str, method: str) -> PaperRow | None:
    """The paper's row for a method on a dataset's network, or None where Table 1 has none."""
    return PAPER_TABLE1.get(dataset, {}).get(method)


def printed_flops(flops: float) -> str:
    """FLOPs at the paper's printed precision: millions to 3 decimals."""
    return f"{flops / 1e6:.3f}M"


def printed_memory(nbytes: float) -> str:
    """Bytes at the paper's printed precision: KB (1000 B) to 1 decimal."""
    return f"{nbytes / 1000:.1f}KB"
