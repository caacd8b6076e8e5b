"""``instantft reproduce [STUDY] [ARGS...]``: run one of the studies of a source checkout.

The studies (the paper's Fig. 7 sweep and report, the backbones, fixed-point, stream, C-core and
device studies) are scripts in ``studies/`` beside ``src/``, not part of the installed package:
this command finds that folder (next to the package's source tree, or in the current directory)
and runs ``studies/STUDY.py ARGS...`` with this Python. STUDY defaults to ``fig7``, so
``instantft reproduce --jobs 2`` is ``python studies/fig7.py --jobs 2``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

from cyclopts import Parameter

from instantft.errors import InstantFTError

DEFAULT_STUDY = "fig7"
USAGE = """Usage: instantft reproduce [STUDY] [ARGS...]

Run studies/STUDY.py ARGS... of the source checkout with this Python (STUDY defaults to fig7, the
paper's figures into results/reproduce). `instantft reproduce STUDY --help` lists a study's options."""


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


def reproduce(*tokens: Annotated[str, Parameter(allow_leading_hyphen=True)]) -> int:
    """Run a study of the source checkout: studies/STUDY.py [ARGS] (default fig7, the paper's figures).

    Every token after ``reproduce`` goes to the study (``instantft reproduce fig7 --help`` lists its
    options); ``studies/README.md`` lists the studies.
    """
    if list(tokens) in (["--help"], ["-h"]):
        print(USAGE)
        try:
            print("studies: " + ", ".join(available(studies_dir())))
        except InstantFTError as exc:
            print(exc)
        return 0
    script, rest = script_and_args(list(tokens))
    return subprocess.run([sys.executable, str(script), *rest], check=False).returncode
