"""``advshield zoo list [--json]``: the shipped checkpoints and their measured metrics."""
from __future__ import annotations

import argparse
import json

from ..models.zoo import zoo_cards
from ..report.tables import markdown_table


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("zoo", help="list the shipped models and purifiers")
    zsub = p.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND", required=True)
    lp = zsub.add_parser("list", help="print a table of the zoo (or --json)")
    lp.add_argument("--json", action="store_true", help="print a JSON list of the cards")
    lp.add_argument("--kind", default=None, help="only this kind (classifier, purifier, ...)")
    lp.set_defaults(run=run_list)


def run_list(args: argparse.Namespace) -> int:
    cards = [c for c in zoo_cards() if args.kind is None or c["kind"] == args.kind]
    if args.json:
        print(json.dumps(cards, indent=2))
        return 0
    rows = []
    for c in cards:
        m = c.get("metrics", {})
        main = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items())
        rows.append([f"zoo:{c['name']}", c["kind"], c["dataset"], c["architecture"], main])
    print(markdown_table(["name", "kind", "dataset", "architecture", "metrics"], rows, numeric=False))
    return 0
