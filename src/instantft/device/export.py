"""``instantft export``: write the bundle ``instantft-device`` fine-tunes from.

It takes the task, model and training options of ``instantft finetune`` - derived here from the
same typed groups of :mod:`instantft.config` (flag, type, help and range check written once, there),
resolved by the same :class:`~instantft.config.RunConfig` - so ``export ... && instantft-device
DIR`` trains exactly what ``finetune`` with the same options trains. Registered as an argparse
subcommand through ``instantft.cli.PARSERS``; importing this module loads nothing heavy.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import json
import typing
from pathlib import Path
from typing import Any

from instantft.device import BUNDLE_FILE, METHODS

#: options of finetune that mean nothing on the device (it always fills the cache in one pass,
#: with its own C loop, in float numerics)
NOT_ON_DEVICE = {"engine", "cache_fill"}


def _field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (what ``finetune --help`` shows)."""
    try:
        body = ast.parse(inspect.getsource(cls)).body[0]
    except (OSError, TypeError, SyntaxError):
        return {}
    docs: dict[str, str] = {}
    items = getattr(body, "body", [])
    for node, nxt in itertools.pairwise(items):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        text = nxt.value.value if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) else None
        if isinstance(text, str):
            docs[node.target.id] = " ".join(text.split())
    return docs


def _groups() -> list[tuple[str, type]]:
    from instantft.config import AdapterConfig, CacheConfig, LoopConfig, ModelConfig, TaskConfig, TrainingConfig

    return [("task", TaskConfig), ("model", ModelConfig), ("training", TrainingConfig), ("loop", LoopConfig),
            ("adapter", AdapterConfig), ("cache", CacheConfig)]  # fmt: skip


def _add_group(p: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of a config group, typed from its annotation."""
    hints = typing.get_type_hints(cls)
    docs = _field_docs(cls)
    group = p.add_argument_group((cls.__doc__ or cls.__name__).splitlines()[0].rstrip("."))
    for f in dataclasses.fields(cls):
        if f.name in NOT_ON_DEVICE:
            continue
        flag = "--" + f.name.replace("_", "-")
        kinds = [a for a in (typing.get_args(hints[f.name]) or (hints[f.name],)) if a is not type(None)]
        kind = kinds[0] if len(kinds) == 1 else str
        help_text = docs.get(f.name, "").replace("%", "%%") or None  # argparse formats help with %
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        elif typing.get_origin(kind) is typing.Literal:
            group.add_argument(flag, choices=list(typing.get_args(kind)), default=f.default, help=help_text)
        else:
            convert = kind if kind in (int, float, Path) else str
            group.add_argument(flag, type=convert, default=f.default, help=help_text)


def run_config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`RunConfig` the flags name (each group checks its own ranges)."""
    from instantft.config import RunConfig, RuntimeConfig

    parts: dict[str, Any] = {}
    for name, cls in _groups():
        given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name not in NOT_ON_DEVICE}
        parts[name] = cls(**given)
    data_dir = Path(args.data_dir) if args.data_dir else None
    return RunConfig(args.method, **parts, runtime=RuntimeConfig(data_dir=data_dir))


def cmd_export(args: argparse.Namespace) -> int:
    from instantft.device.bundle import build_bundle, write_bundle
    from instantft.fileio import ensure_writable

    run = run_config_from_args(args)
    ensure_writable(Path(args.out) / BUNDLE_FILE)  # fail before loading data, not after
    bundle = build_bundle(run)
    out = write_bundle(args.out, bundle)
    m = bundle.manifest
    summary = {
        "out": str(out),
        "method": m["method"],
        "storage": m["storage"],
        "dataset": m["task"]["dataset"],
        "angle": m["task"]["angle"],
        "samples": m["cache"]["rows"],
        "eval_samples": m["task"]["eval_images"],
        "steps": m["steps"],
        "bundle_bytes": (out / BUNDLE_FILE).stat().st_size,
        "pixels_lossless": m["pixels"]["lossless"],
    }
    if args.json:
        print(json.dumps(summary))
    else:
        note = "" if summary["pixels_lossless"] else " (rotated pixels rounded to uint8: see manifest.json 'pixels')"
        print(
            f"bundle written to {out}: {summary['method']} on {summary['dataset']} {summary['angle']:g}°, "
            f"{summary['samples']} + {summary['eval_samples']} images, {summary['steps']} steps, "
            f"{summary['bundle_bytes']} bytes{note}; run: instantft-device {out}"
        )
    return 0


def add_export(sub: Any) -> None:
    """Register ``instantft export`` (listed in :data:`instantft.cli.PARSERS`)."""
    from instantft.config import common

    p = sub.add_parser(
        "export", parents=[common()], help="Write a bundle for instantft-device (fine-tuning on the device)."
    )
    p.add_argument("--method", required=True, choices=list(METHODS), help="the cached methods the device runs")
    p.add_argument("--out", required=True, help="bundle directory (created; bundle.safetensors + manifest.json)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    for _, cls in _groups():
        _add_group(p, cls)
    p.set_defaults(func=cmd_export)
