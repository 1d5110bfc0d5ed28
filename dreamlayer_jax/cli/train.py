"""`dreamlayer-train`: not yet available (training lands with its issue)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("error: training is not available yet", file=sys.stderr)
    return 2
