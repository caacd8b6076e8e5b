"""The bundled fan backbones on every room (or fan size), on take 2 (the evaluation take):
results/fan/backbones.md. Each backbone was made by

    instantft pretrain --dataset SOURCE --out src/instantft/models/weights/mlp-SOURCE.safetensors

(SOURCE: fan-silentA, fan-silentB, fan-12cm; the paper's schedule: SGD, 10 epochs, batch 20, lr 0.1, seed 0).

    INSTANTFT_DATA=/work/shared/data .venv/bin/python studies/fan_backbones.py
"""

from __future__ import annotations

from pathlib import Path

from instantft.data.fan import FAN_SOURCES, ROOMS, fan_split
from instantft.models import accuracy, predict
from instantft.run import load_backbone

SIZES = ("12cm", "14cm", "8cm")


def main(out: Path = Path("results/fan/backbones.md")) -> None:
    lines = ["# The bundled fan backbones", "",
             "Accuracy (%) on take 2 of each room (fan type) or fan size (fan speed; second half of each file).",
             "`python studies/fan_backbones.py`", "",
             "| backbone | architecture | weights sha256 | trained on | " + " | ".join(ROOMS + SIZES) + " |",
             "|---|---|---|---|" + "---:|" * (len(ROOMS) + len(SIZES))]  # fmt: skip
    for source, (label, group) in FAN_SOURCES.items():
        model, meta = load_backbone(source)
        cells = []
        for g in ROOMS + SIZES:
            if (label == "type") != (g in ROOMS):
                cells.append("")
                continue
            _, test = fan_split(label, g)
            cells.append(f"{100 * accuracy(predict(model, test.images), test.labels):.1f}")
        lines.append(f"| mlp-{source} | {meta['architecture']} | {meta['weights_sha256'][:12]} | {group} take 1 | "
                     + " | ".join(cells) + " |")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
