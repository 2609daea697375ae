"""Write docs/commands.md from the CLI's own --help, so the reference never drifts from the
code (tests/test_docs.py fails when the file is out of date).

    python docs/make_commands.py          # rewrite docs/commands.md
    python docs/make_commands.py --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TARGET = ROOT / "docs" / "commands.md"


def render() -> str:
    os.environ.update(COLUMNS="100", TERM="dumb", NO_COLOR="1")
    import typer
    from typer.testing import CliRunner

    from vae_search.cli import app

    runner = CliRunner()
    command = typer.main.get_command(app)
    parts = ["# Command reference\n", "Generated from `vae-search COMMAND --help` by `python docs/make_commands.py`; "
             "do not edit by hand.\n"]
    for name in ["--help", *sorted(command.commands)]:
        args = ["--help"] if name == "--help" else [name, "--help"]
        result = runner.invoke(app, args, prog_name="vae-search", terminal_width=100)
        title = "vae-search" if name == "--help" else f"vae-search {name}"
        text = "\n".join(line.rstrip() for line in result.output.strip().splitlines())
        parts.append(f"## `{title}`\n\n```\n{text}\n```\n")
    return "\n".join(parts)


def main() -> None:
    text = render()
    if "--check" in sys.argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print("docs/commands.md is out of date: run python docs/make_commands.py", file=sys.stderr)
            sys.exit(1)
        return
    TARGET.write_text(text)
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
