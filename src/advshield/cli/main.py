"""``advshield`` command line. Sub-commands live in one small module each and register here.

Every user error (a bad flag or number, a bad path, name or file) prints exactly one line
``advshield: error: ...`` on stderr (no usage block, no ANSI codes) and exits with code 2: argparse errors by
``SystemExit(2)`` from :class:`Parser`, errors found while running by :func:`main` returning 2."""
from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from ..errors import AdvshieldError

EXIT_USER_ERROR = 2
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]")
_ARGUMENT = re.compile(r"^argument ([^:]+): ")


def one_line(text: object) -> str:
    """``text`` as a single line: ANSI escape sequences and other control characters removed, runs of
    whitespace (newlines included) collapsed to one space."""
    s = _ANSI.sub("", str(text))
    s = "".join(c if c.isprintable() or c in "\t\n\r" else " " for c in s)
    return " ".join(s.split())


def error_line(message: object) -> str:
    """The one line printed for a user error: ``advshield: error: <message>``."""
    return f"advshield: error: {one_line(message)}"


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose errors are one line ``advshield: error: --flag: message (see PROG --help)`` and
    exit code 2 (instead of a usage block and ``PROG: error:``). ``--help`` is unchanged. Sub-parsers made by
    :meth:`add_subparsers` are of this class too."""

    def error(self, message: str) -> NoReturn:
        msg = _ARGUMENT.sub(lambda m: f"{m.group(1)}: ", one_line(message))
        self.exit(EXIT_USER_ERROR, error_line(f"{msg} (see: {self.prog} --help)") + "\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from . import attack, audit, data, demo, listing, purify, report, train, universal, zoo  # noqa: F401, E501
    from . import eval as eval_cmd

    parser = Parser(prog="advshield", description="Transferable adversarial attacks, purifier "
                    "defenses and honest robustness evaluation. Images are in [0,1]; on the "
                    "command line eps and step sizes are in 0-255 pixel units.")
    parser.add_argument("--version", action="version", version=f"advshield {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    for module in (demo, eval_cmd, audit, report, attack, universal, purify, train, zoo, listing, data):
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (0, 2 for a user error, 130 when interrupted). A command line
    argparse refuses raises ``SystemExit(2)`` after printing its one line; ``--help``/``--version``
    raise ``SystemExit(0)``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int | None] = args.run
    try:
        return int(run(args) or 0)
    except AdvshieldError as e:
        print(error_line(e), file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as e:
        if e.filename is None:  # not about a user's path: a bug or the machine, keep the traceback
            raise
        print(error_line(f"{e.strerror or e}: {e.filename}"), file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("advshield: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
