"""Print the README settings table from the Settings model (python scripts/settings_table.py)."""

from __future__ import annotations

import os

from sluiceway.config import Settings

MIB = 1024 * 1024


def shown(value: object) -> str:
    """A default as the README shows it: home abbreviated, byte sizes in MiB, long text cut."""
    if isinstance(value, str):
        value = value.replace(os.path.expanduser("~"), "~")
        return value if len(value) <= 40 else value[:37] + "…"
    if isinstance(value, int) and not isinstance(value, bool) and value >= MIB and value % MIB == 0:
        return f"{value // MIB} MiB"
    return str(value)


def main() -> None:
    print("| variable | default | meaning |")
    print("| --- | --- | --- |")
    for variable, field in Settings.variables():
        print(f"| `{variable}` | `{shown(field.default)}` | {field.description} |")


if __name__ == "__main__":
    main()
