"""``python tests/train/runner.py ARGS`` = ``winq-train ARGS`` (with test stand-ins if needed)."""

import os
import sys

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__))]

import standins  # noqa: E402

standins.install()

from winq.train.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
