"""Our sections of optuna-dashboard's notes: replaced in place, the user's text kept, the
markers invisible in rendered markdown, and older notes' HTML-comment markers rewritten."""

from __future__ import annotations

from vae_search.notes import replace_section


def test_a_section_is_added_replaced_in_place_and_removed_around_the_users_text():
    note = replace_section("", "best", "winner: trial 3")
    assert note == "[//]: # (vae-search best)\n\nwinner: trial 3\n\n[//]: # (/vae-search best)\n"
    mine = "My own remark.\n\n" + note + "\nAnd a last word."
    again = replace_section(mine, "best", "winner: trial 7")
    assert again.startswith("My own remark.\n\n[//]: # (vae-search best)\n\nwinner: trial 7\n\n")
    assert again.endswith("[//]: # (/vae-search best)\n\nAnd a last word.\n") and "trial 3" not in again
    assert replace_section(again, "best", "") == "My own remark.\n\nAnd a last word.\n"
    assert replace_section("Just mine.", "best", "") == "Just mine."


def test_an_unchanged_section_leaves_the_note_as_it_is():
    note = replace_section("Mine.", "keep", "weights of 0, 2 not kept")
    assert replace_section(note, "keep", "weights of 0, 2 not kept") is note  # nothing to save


def test_two_sections_are_independent():
    note = replace_section(replace_section("", "best", "B"), "keep", "K")
    note = replace_section(note, "best", "B2")
    assert "B2" in note and "\nK\n" in note and note.index("B2") < note.index("K")


def test_older_html_comment_markers_are_rewritten():
    """optuna-dashboard printed `<!-- ... -->` as text; a note written with them gets the new
    markers the next time its section is written."""
    old = "<!-- vae-search best -->\nwinner: trial 3\n<!-- /vae-search best -->\n\n<!-- vae-search keep -->\nK\n<!-- /vae-search keep -->"
    note = replace_section(replace_section(old, "best", "winner: trial 3"), "keep", "K")
    assert "<!--" not in note
    assert note == ("[//]: # (vae-search best)\n\nwinner: trial 3\n\n[//]: # (/vae-search best)\n\n"
                    "[//]: # (vae-search keep)\n\nK\n\n[//]: # (/vae-search keep)\n")
