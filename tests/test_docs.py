"""The documentation stays true to the code: links resolve, the README fits its budget, and
the generated command reference names every option the CLI has."""

from __future__ import annotations

import re
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_relative_link_resolves():
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#:]+)\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"


def test_readme_starts_a_user_in_at_most_15000_bytes():
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 15_000
    commands = [line for line in text.splitlines() if line.startswith("    python3.11 -m venv .venv")]
    assert "vae-search grid --preset b1" in commands[0] and "pytest" in commands[1]


def test_the_command_reference_names_every_option():
    from vae_search.cli import app

    reference = (ROOT / "docs" / "commands.md").read_text()
    command = typer.main.get_command(app)
    for name, sub in command.commands.items():
        assert f"## `vae-search {name}`" in reference, f"run python docs/make_commands.py ({name} is missing)"
        section = reference.split(f"## `vae-search {name}`", 1)[1].split("\n## ", 1)[0]
        for param in sub.params:
            for opt in param.opts:
                assert opt in section, f"docs/commands.md lacks {name} {opt}: run python docs/make_commands.py"


def test_help_shows_every_help_text_whole():
    """Typer renders help as markdown: two stars in `train/CLASS/*.jpg, test/CLASS/*.jpg` became
    emphasis and vanished. Every option's help and every paragraph of a command's, rendered
    without wrapping, must read as written (code spans lose only their backticks)."""
    from typer.testing import CliRunner

    from vae_search.cli import app

    command = typer.main.get_command(app)
    runner = CliRunner()
    for name, sub in [("", command), *command.commands.items()]:
        out = runner.invoke(app, [name, "--help"] if name else ["--help"], env={"COLUMNS": "5000"}).output
        shown = " ".join(out.replace("│", " ").split())
        texts = [p.help for p in sub.params if getattr(p, "help", None)]
        if name:  # a command's docstring, paragraph by paragraph
            texts += (sub.help or "").split("\n\n")
        for text in texts:
            want = " ".join(text.replace("`", "").split())
            assert want in shown, f"vae-search {name} --help does not show: {want[:120]}"


def test_a_flag_shows_no_value_in_help():
    """A flag takes no value, so its --help row names no type: Typer 0.29 printed `--json <bool>`
    and `--help <bool>`, as if `--json true` were the way to use it (pyproject leaves 0.29 out)."""
    from typer.testing import CliRunner

    from vae_search.cli import app

    command = typer.main.get_command(app)
    runner = CliRunner()
    flags = 0
    for name, sub in [("", command), *command.commands.items()]:
        out = runner.invoke(app, [name, "--help"] if name else ["--help"], env={"COLUMNS": "5000"}).output
        rows = [line.replace("│", " ").split() for line in out.splitlines()]
        for param in sub.get_params(typer.Context(sub)):  # with --help, which Typer adds
            if not getattr(param, "is_flag", False):
                continue
            row = next(r for r in rows if r and r[0] == param.opts[0])
            flags += 1
            assert not row[1].startswith("<") and row[1].upper() != "BOOLEAN", f"vae-search {name} --help: {' '.join(row)[:100]}"
    assert flags >= 10  # --help of every command, --version, --json, --dry-run ...
