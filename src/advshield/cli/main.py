"""``advshield`` command line. Sub-commands live in one small module each and register here.

User errors (bad paths, names, files) print one line ``advshield: error: ...`` and exit with code 2."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from ..errors import AdvshieldError

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    from . import attack, data, demo, eval as eval_cmd, listing, purify, train, universal, zoo  # noqa: F401  (each adds its sub-commands)
    from .. import __version__

    parser = argparse.ArgumentParser(prog="advshield", description="Transferable adversarial attacks, purifier "
                                     "defenses and honest robustness evaluation. Images are in [0,1]; on the "
                                     "command line eps and step sizes are in 0-255 pixel units.")
    parser.add_argument("--version", action="version", version=f"advshield {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (demo, eval_cmd, attack, universal, purify, train, zoo, listing, data):
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int | None] = args.run
    try:
        return int(run(args) or 0)
    except AdvshieldError as e:
        print(f"advshield: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        print(f"advshield: error: {e.strerror or e}: {e.filename}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("advshield: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
