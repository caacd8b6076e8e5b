"""``instantft export``: write the bundle ``instantft-device`` fine-tunes from.

It takes the same :class:`~instantft.run.Run` as ``instantft finetune`` (the command line builds
both from the same settings), so ``export ... && instantft-device DIR`` trains exactly what
``finetune`` with the same options trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from instantft.device import BUNDLE_FILE

if TYPE_CHECKING:
    from instantft.run import Run
    from instantft.settings import Runtime

def export_bundle(run: Run, out: Path, runtime: Runtime | None = None) -> dict[str, Any]:
    """Write the bundle of ``run`` into the directory ``out``; what was written, as a summary."""
    from instantft.device.bundle import build_bundle, write_bundle
    from instantft.fileio import ensure_writable

    ensure_writable(Path(out) / BUNDLE_FILE)  # fail before loading data, not after
    bundle = build_bundle(run, runtime)
    written = write_bundle(out, bundle)
    m = bundle.manifest
    return {
        "out": str(written),
        "method": m["method"],
        "storage": m["storage"],
        "dataset": run.task.name,
        "angle": m["task"].get("angle"),
        "samples": m["cache"]["rows"],
        "eval_samples": m["task"]["eval_images"],
        "steps": m["steps"],
        "bundle_bytes": (written / BUNDLE_FILE).stat().st_size,
        "pixels_lossless": m["pixels"]["lossless"],
    }
