"""The fleet commands: registered under `instantft fleet`, and one line when Flower is missing."""

from __future__ import annotations

import sys

from instantft.cli import main


def test_fleet_help_lists_both_engines(capsys):
    assert main(["fleet", "--help"]) == 0
    out = capsys.readouterr().out
    assert "deploy" in out and "simulate" in out


def test_fleet_without_flower_says_so_in_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "flwr", None)  # import flwr raises ImportError
    assert main(["fleet", "deploy", "--nodes", "3", "--rounds", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: the fleet commands need Flower: pip install 'instantft[fleet]'"
