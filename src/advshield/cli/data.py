"""``advshield data export``: write a dataset split as a PNG folder tree (class sub-folders)."""
from __future__ import annotations

import argparse

from ..data import DATASETS, load_dataset
from ..data.export import export_png_tree
from .common import positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="export datasets as PNG folders")
    dsub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    e = dsub.add_parser("export", help="write a split as OUT/<index>_<class>/<n>.png",
                        description="Class folders are named <index>_<class> so that sorted names keep the "
                        "label order; an existing file is never replaced unless --overwrite.")
    e.add_argument("--dataset", default="fashion-mnist", help=f"one of {', '.join(sorted(DATASETS))}")
    e.add_argument("--split", default="test", choices=["train", "test"])
    e.add_argument("--data-root", default=None, help="directory holding the dataset files")
    e.add_argument("--n", type=positive_int, default=None, help="only the first N images")
    e.add_argument("--out", required=True, help="output directory")
    e.add_argument("--overwrite", action="store_true", help="replace existing PNGs of the same names")
    e.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    data = load_dataset(args.dataset, args.split, args.data_root).subset(args.n)
    n = export_png_tree(data, args.out, overwrite=args.overwrite)
    print(f"wrote {n} PNGs of {data.name} to {args.out}")
    return 0
