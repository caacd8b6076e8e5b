"""A command that needs an optional package missing from the install says so in one line, naming
the extra that installs it."""

from __future__ import annotations

import builtins
import sys

import pytest

from instantft.errors import InstantFTError
from instantft.extras import EXTRAS, require


def test_require_returns_the_module():
    assert require("stream", "json").dumps([1]) == "[1]"


def test_missing_module_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "river", None)  # what an install without river looks like
    with pytest.raises(InstantFTError) as info:
        require("stream", "river.drift", "instantft stream --detector")
    assert str(info.value) == (
        "instantft stream --detector needs the 'stream' extra: pip install 'instantft[stream]'"
    )


def test_detector_and_plot_without_their_extras(monkeypatch: pytest.MonkeyPatch, tmp_path, capsys):
    real_import = builtins.__import__

    def no_optional(name: str, *args, **kwargs):
        if name.split(".")[0] in ("river", "matplotlib"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_optional)
    for mod in [m for m in sys.modules if m.split(".")[0] in ("river", "matplotlib")]:
        monkeypatch.delitem(sys.modules, mod)
    from instantft.cli import main

    code = main(["stream", "--schedule", "abrupt", "--detector", "adwin", "--phase-length", "40", "--json"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == "error: instantft stream --detector needs the 'stream' extra: pip install 'instantft[stream]'\n"
    code = main(["stream", "--schedule", "abrupt", "--plot", str(tmp_path / "p.png"), "--phase-length", "40"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == "error: instantft stream --plot needs the 'plot' extra: pip install 'instantft[plot]'\n"


def test_every_extra_is_declared():
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")

    declared = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert set(EXTRAS) <= set(declared["project"]["optional-dependencies"])
