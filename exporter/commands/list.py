"""``exporter list``: every recipe with family, input size, source and prepare steps."""
from __future__ import annotations

import json

from ..errors import EXIT_CODES_ALWAYS

EPILOG = """examples:
  exporter list
  exporter list --json | python -c "import json,sys; print([r['name'] for r in json.load(sys.stdin)])"
beyond the recipes: torchvision:<name> (any torchvision classifier), timm:<name>, file.py:factory

exit codes: 0 ok, 2 usage, 4 a recipe file that does not parse; """ + EXIT_CODES_ALWAYS


def add_parser(sub) -> None:
    import argparse

    p = sub.add_parser("list", help="list the zoo's recipes", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="machine-readable output (default: a table)")
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..recipes import all_recipes

    recipes = all_recipes()
    if args.json:
        print(json.dumps([{"name": r.name, "family": r.family, "source": r.source,
                           "input": list(r.input.size), "channels": r.input.channels,
                           "classes": r.num_classes, "prepare": r.prepare_steps,
                           "weights": r.weights} for r in recipes.values()], indent=2))
        return 0
    table = Table(title=f"zoo-exporter recipes ({len(recipes)})")
    for col in ("model", "family", "input", "source", "pretrained", "prepare"):
        table.add_column(col)
    for r in recipes.values():
        h, w = r.input.size
        table.add_row(r.name, r.family, f"{r.input.channels}x{h}x{w}", r.source,
                      r.weights or "-", ", ".join(r.prepare_steps))
    from ..report import plain_if_asked

    Console(width=140, **plain_if_asked()).print(table)
    return 0
