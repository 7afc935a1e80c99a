"""The README is the front door: it must not fall behind the code it documents."""

from __future__ import annotations

from pathlib import Path

from sluiceway.config import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_in_the_readme() -> None:
    missing = [variable for variable, _ in Settings.variables() if f"`{variable}`" not in README]
    assert not missing, f"regenerate the table with scripts/settings_table.py: {missing}"


def test_the_two_commands_open_the_readme() -> None:
    first_block = README.split("```sh", 1)[1].split("```", 1)[0]
    assert "make run" in first_block and "make test" in first_block
    assert "make test" in (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
