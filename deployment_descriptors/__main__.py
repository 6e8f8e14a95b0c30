"""``python -m deployment_descriptors validate FILE...``: check SLA files from the shell.

Prints ``FILE: valid`` or one ``FILE: PATH: MESSAGE`` line per problem on stdout (this is a
CLI, so print is its interface). Exit status: 0 when every file is valid, 1 when any file is
invalid or unreadable, 2 for usage errors (argparse).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .validation import validate_sla


def _validate_file(path: str) -> list[tuple[str, str]]:
    try:
        with open(path, encoding="utf-8") as handle:
            doc = json.load(handle)
    except OSError as exc:
        return [("", f"cannot read file: {exc.strerror or exc}")]
    except json.JSONDecodeError as exc:
        return [("", f"not valid JSON: {exc}")]
    return [(p["path"], p["message"]) for p in validate_sla(doc)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployment_descriptors",
                                     description="Treeline SLA v2.0 descriptor tools")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("validate", help="validate SLA v2.0 JSON files")
    check.add_argument("files", nargs="+", metavar="FILE")
    args = parser.parse_args(argv)

    ok = True
    for path in args.files:
        problems = _validate_file(path)
        if not problems:
            print(f"{path}: valid")
        for where, message in problems:
            ok = False
            print(f"{path}: {where or '(document)'}: {message}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
