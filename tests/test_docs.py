"""The README is the front door: short, starts with the two set-up commands, and its Python
example runs as pasted (on the data bundled in the package). The docs site itself is built with
``mkdocs build --strict`` by ``make test``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_LIMIT = 12_000  # bytes


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def test_readme_is_short():
    size = README.stat().st_size
    assert size <= README_LIMIT, f"README.md is {size} bytes; move detail into docs/ (limit {README_LIMIT})"


def test_readme_shows_the_two_setup_commands():
    text = _readme()
    for command in ("make demo", "make test"):
        assert re.search(rf"^{command}\b", text, flags=re.M), f"README.md does not show `{command}` in a code block"


def test_readme_links_to_docs_pages_that_exist():
    links = re.findall(r"\]\((docs/[^)#]+)", _readme())
    assert links, "README.md links to no docs page"
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    """The first ```python block, executed as a reader would paste it, in an empty directory."""
    text = _readme()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    lines = [line for line in code.splitlines() if line.strip()]
    assert len(lines) <= 10 and "FineTuner" in code, "the README's first example should be a ten-line FineTuner example"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INSTANTFT_DATA", raising=False)  # the bundled test split is enough
    monkeypatch.setenv("INSTANTFT_OFFLINE", "1")
    exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
    assert (tmp_path / "adapter.safetensors").is_file()


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(encoding="utf-8"), flags=re.M | re.S)


def test_the_docs_home_page_shows_the_readme_example():
    assert _python_blocks(DOCS / "index.md")[0] == _python_blocks(README)[0]


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md") if _python_blocks(p)))
def test_docs_python_examples_run(page, tmp_path, monkeypatch):
    """Every ```python block of a docs page runs as pasted, in an empty directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INSTANTFT_DATA", raising=False)
    monkeypatch.setenv("INSTANTFT_OFFLINE", "1")
    for i, code in enumerate(_python_blocks(DOCS / page)):
        exec(compile(code, f"{DOCS / page} (block {i + 1})", "exec"), {"__name__": "__docs__"})


def test_the_cli_page_renders_the_help_of_every_registered_subcommand():
    """docs/hooks.py asks the app for its subcommands; each one's --help must render."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    top, helps = hooks.render_cli_help()
    assert {"finetune", "evaluate", "stream", "export"} <= set(helps)
    for name, text in helps.items():
        assert name in top and f"instantft {name}" in text.lower(), name
