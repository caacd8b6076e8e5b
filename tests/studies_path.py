"""The studies are scripts of the checkout (``studies/``), not a package: a test imports one by
name (``import fig7``) after importing this module, which puts that folder on ``sys.path``."""

from __future__ import annotations

import sys
from pathlib import Path

STUDIES = Path(__file__).resolve().parents[1] / "studies"
if str(STUDIES) not in sys.path:
    sys.path.insert(0, str(STUDIES))
