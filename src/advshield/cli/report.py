"""``advshield report DIR``: rebuild DIR/report.html (and report.md) from the files an earlier ``eval``, ``demo``
or ``audit`` saved there (report.json + flags.safetensors [+ examples.safetensors], or audit.json), without
recomputing anything."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="rebuild report.html from a result directory",
                       description="Rebuild DIR/report.html (and DIR/report.md for a grid) from the results saved "
                       "there by eval, demo or audit; nothing is recomputed. The page is self-contained: open it in "
                       "any browser, offline, or print it.")
    p.add_argument("dir", metavar="DIR", help="a directory written by advshield eval, demo or audit")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..report.write import rebuild

    paths = rebuild(args.dir)
    print("wrote " + " and ".join(str(p) for p in paths.values()))
    return 0
