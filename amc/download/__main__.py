"""``python -m amc.download ...``: the same as ``amc download ...``."""

import sys

from amc.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["download", *sys.argv[1:]]))
