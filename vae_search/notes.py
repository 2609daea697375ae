"""vae-search's own sections of optuna-dashboard's notes (markdown on a study or a trial),
each replaced on every run while what people wrote around it stays.

A section sits between two markers that no markdown renderer shows: link reference
definitions (`[//]: # (vae-search best)`, CommonMark's comment idiom), each on its own
line between blank lines. HTML comments were the markers before, and optuna-dashboard
printed them as text; a note that still has them is rewritten with the new ones."""

from __future__ import annotations


def _markers(name: str) -> list[tuple[str, str]]:
    """The markers of section `name`: today's, then the older HTML comments."""
    return [(f"[//]: # (vae-search {name})", f"[//]: # (/vae-search {name})"),
            (f"<!-- vae-search {name} -->", f"<!-- /vae-search {name} -->")]


def replace_section(note: str, name: str, body: str) -> str:
    """`note` with section `name` holding `body`: in its place where the note has it, else at
    the end; an empty `body` removes the section. An unchanged section gives the note back
    unchanged, so a caller can tell that nothing needs saving."""
    begin, end = _markers(name)[0]
    block = f"{begin}\n\n{body.strip()}\n\n{end}" if body.strip() else ""
    for b, e in _markers(name):
        if b in note and e in note.split(b, 1)[1]:
            before, rest = note.split(b, 1)
            after = rest.split(e, 1)[1]
            parts = [p for p in (before.strip(), block, after.strip()) if p]
            new = "\n\n".join(parts) + "\n" if parts else ""
            return note if new.strip() == note.strip() else new
    if not block:
        return note
    return (note.strip() + "\n\n" + block if note.strip() else block) + "\n"


def update_note(target, name: str, body: str) -> None:
    """Section `name` of the note on a study or trial set to `body`, saved only where the note
    changes: optuna-dashboard keeps every saved version, so a rerun on an unchanged study
    writes nothing (a committed or shared database stays byte for byte the same)."""
    from optuna_dashboard import get_note, save_note

    note = get_note(target)
    new = replace_section(note, name, body)
    if new != note:
        save_note(target, new)
