"""``python -m advshield ARGS``: the same as the ``advshield`` command (exit code passed on)."""
import sys

from advshield.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
