"""``instantft reproduce [STUDY] [ARGS...]``: run one of the studies of a source checkout.

The studies (the paper's Fig. 7 sweep and report, the backbones, fixed-point, stream, C-core and
device studies) are scripts in ``studies/`` beside ``src/``, not part of the installed package:
this command finds that folder (next to the package's source tree, or in the current directory)
and runs ``studies/STUDY.py ARGS...`` with this Python. STUDY defaults to ``fig7``, so
``instantft reproduce --jobs 2`` is ``python studies/fig7.py --jobs 2``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

from instantft.errors import InstantFTError

DEFAULT_STUDY = "fig7"


def studies_dir() -> Path:
    """The checkout's ``studies/`` folder, or a one-line error naming what is missing."""
    here = Path(__file__).resolve().parents[2]  # src/instantft/reproduce.py -> the checkout
    for root in (here, Path.cwd()):
        if (root / "studies" / f"{DEFAULT_STUDY}.py").is_file():
            return root / "studies"
    raise InstantFTError(
        "instantft reproduce runs the studies of a source checkout (studies/ beside src/ or in the current "
        "directory), and none was found: clone the repository and run it there"
    )


def available(folder: Path) -> list[str]:
    """The studies in ``folder``: its scripts, less the helpers whose names start with ``_``."""
    return sorted(p.stem for p in folder.glob("*.py") if not p.name.startswith("_"))


def script_and_args(tokens: list[str]) -> tuple[Path, list[str]]:
    """(the study's script, the arguments to hand it) from the command line after ``reproduce``."""
    folder = studies_dir()
    study, rest = (tokens[0], tokens[1:]) if tokens and not tokens[0].startswith("-") else (DEFAULT_STUDY, tokens)
    script = folder / f"{study.replace('-', '_')}.py"
    if study.startswith("_") or not script.is_file():
        raise InstantFTError(f"no study {study!r} in {folder}; valid: {', '.join(available(folder))}")
    return script, rest


def cmd_reproduce(args: argparse.Namespace) -> int:
    script, rest = script_and_args(list(args.tokens))
    return subprocess.run([sys.executable, str(script), *rest], check=False).returncode


def add_reproduce(sub: Any) -> None:
    # every token is handed to the study, its flags included: nothing here is an option
    p = sub.add_parser(
        "reproduce",
        help="run a study of the source checkout: studies/STUDY.py (default fig7, the paper's figures)",
        usage="instantft reproduce [STUDY] [ARGS...]   (STUDY --help for its options)",
        prefix_chars="\0",
        add_help=False,
    )
    p.add_argument("tokens", nargs="*")
    p.set_defaults(func=cmd_reproduce)
