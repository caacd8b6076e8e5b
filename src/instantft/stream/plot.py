"""Accuracy over time: one line per method (mean over seeds), drift phases shaded, adaptation
moments marked (matplotlib, headless)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from instantft.extras import require
from instantft.fileio import atomic_write

COLORS = {
    "none": "#7f7f7f",
    "ft-last": "#8c564b",
    "lora-all": "#1f77b4",
    "skip-lora": "#2ca02c",
    "skip2-lora": "#9467bd",
    "instantft": "#d62728",
}


def draw(ax: Any, runs: Mapping[str, Sequence[dict[str, Any]]], title: str = "", marks: bool = True) -> None:
    """One panel: windowed online accuracy of each label's runs (mean over seeds)."""
    first = next(iter(runs.values()))[0]
    for n, p in enumerate(first["phases"]):
        if n % 2:
            ax.axvspan(p["start"], p["end"], color="0.92", zorder=0)
        ax.text((p["start"] + p["end"]) / 2, 0.02, p["label"], ha="center", va="bottom", fontsize=7,
                transform=ax.get_xaxis_transform())  # fmt: skip
    for k, (label, reports) in enumerate(runs.items()):
        at = np.array(reports[0]["windowed"]["at"])
        acc = np.mean([r["windowed"]["accuracy"] for r in reports], axis=0)
        color = COLORS.get(label.split(" ")[0], f"C{k}")
        ax.plot(at, acc, label=label, color=color, lw=1.2)
        if marks:
            moments = [e["at"] for e in reports[0]["adaptation_log"]]
            ax.plot(moments, np.full(len(moments), 1.005 + 0.012 * k), "|", color=color, ms=4,
                    transform=ax.get_xaxis_transform(), clip_on=False)  # fmt: skip
    ax.set_ylim(0, 1)
    ax.set_xlim(0, first["stream"]["samples"])
    ax.set_xlabel("arrivals")
    ax.set_ylabel(f"online accuracy (last {first['windowed']['window']})")
    if title:
        ax.set_title(title, fontsize=9, pad=14)


def plot_runs(runs: Mapping[str, Sequence[dict[str, Any]]], path: str | os.PathLike[str], title: str = "") -> Path:
    matplotlib = require("plot", "matplotlib", "instantft stream --plot")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    draw(ax, runs, title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    out = atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=130, format=fmt))
    plt.close(fig)
    return out


def corruption_grid(path: str | os.PathLike[str], samples: int = 4, seed: int = 0) -> Path:
    """The same test digits under every corruption (and rotations), as the stream draws them."""
    matplotlib = require("plot", "matplotlib", "the corruption grid")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from instantft.data.datasets import load_split
    from instantft.stream.corruptions import CORRUPTIONS
    from instantft.stream.source import apply_transform

    test = load_split("mnist", "test")
    src = torch.arange(samples)
    keys = ["clean", "rot(45)", "rot(90)", *CORRUPTIONS]
    fig, axes = plt.subplots(samples, len(keys), figsize=(len(keys) * 0.9, samples * 0.95))
    for c, key in enumerate(keys):
        images = apply_transform(key, test.images[:samples], src, seed)
        for r in range(samples):
            ax = axes[r, c]
            ax.imshow(images[r, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(key.replace("_", "\n"), fontsize=7)
    fig.tight_layout()
    out = atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return out
