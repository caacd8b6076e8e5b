"""MkDocs hooks: the command-line page is generated from the CLI, and the committed results are
served beside the pages.

``on_page_markdown`` replaces the marker ``<!-- cli-help -->`` in ``cli.md`` with the ``--help``
of every subcommand the ``instantft`` app registers. The list of subcommands is asked from the
app itself (after ``instantft --help`` has registered them all), never written here, so a
command added, renamed or converted to another parser shows up at the next build. A help that
fails to render fails the build.

``on_page_content`` turns the Sphinx roles that some docstrings use (``:class:`~a.b.C```) into
cross-references the API reference resolves where it can (plain code otherwise).

``on_files`` adds every file under ``results/`` in the repository root to the site (the Markdown
reports as pages, the rest as they are), so the pages link to the committed result files and a
link to a file that is not there fails the strict build.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- cli-help -->"
WIDTH = "80"  # what fits the Material theme's content column without scrolling

# Runs in a fresh interpreter: asks the app for its subcommands, then renders each one's help
# through instantft.cli.main, the function behind the `instantft` console script.
_RENDER = r"""
import contextlib, io, json
from instantft import cli

def run(argv):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # a parser that exits after printing its help
            code = exc.code if isinstance(exc.code, int) else 0
    return code or 0, buf.getvalue()

code, top = run(["--help"])  # registers every subcommand, as `instantft --help` does
names = [n for n in cli.app if not n.startswith("-") and getattr(cli.app[n], "show", True)]
out = {"top": [code, top], "commands": {}}
for name in names:
    out["commands"][name] = run([name, "--help"])
print(json.dumps(out))
"""


def render_cli_help() -> tuple[str, dict[str, str]]:
    """(``instantft --help``, {subcommand: its --help}) in the order the app lists them."""
    env = {**os.environ, "COLUMNS": WIDTH, "NO_COLOR": "1", "TERM": "dumb", "PYTHONIOENCODING": "utf-8"}
    env.pop("FORCE_COLOR", None)
    proc = subprocess.run(
        [sys.executable, "-c", _RENDER], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"rendering the CLI help failed:\n{proc.stderr}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    code, top = data["top"]
    if code != 0 or not data["commands"]:
        raise RuntimeError(f"`instantft --help` exited {code} or listed no subcommand")
    helps = {}
    for name, (code, text) in data["commands"].items():
        if code != 0 or not text.strip():
            raise RuntimeError(f"`instantft {name} --help` exited {code} with {len(text)} characters of help")
        helps[name] = text
    return top, helps


def _block(command: str, text: str) -> str:
    return f"```text\n$ {command}\n{text.rstrip()}\n```\n"


def cli_markdown() -> str:
    top, helps = render_cli_help()
    parts = [_block("instantft --help", top)]
    for name, text in helps.items():
        parts.append(f"## `instantft {name}`\n\n{_block(f'instantft {name} --help', text)}")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, cli_markdown())


# docstrings written for Sphinx: :class:`~instantft.methods.FineTuneConfig` arrives in the HTML as
# :class:<code>~instantft.methods.FineTuneConfig</code>
_ROLE = re.compile(r":(?:class|mod|meth|func|data|attr|exc|obj):<code>(~?)([^<]+)</code>")


def _role(match: re.Match[str]) -> str:
    short, target = match[1], match[2]
    shown = target.rsplit(".", 1)[-1] if short else target
    return f'<autoref identifier="{target}" optional><code>{shown}</code></autoref>'


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    return _ROLE.sub(_role, html)


def on_files(files: Files, config: Any) -> Files:
    results = ROOT / "results"
    for path in sorted(results.rglob("*")):
        if path.is_file():
            uri = path.relative_to(ROOT).as_posix()
            files.append(File(uri, str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files
