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
