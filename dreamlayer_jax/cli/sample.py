"""`dreamlayer-sample`: not yet available (the DreamLayer pipeline lands with its issue)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("error: sampling is not available yet: the DreamLayer pipeline has not landed",
          file=sys.stderr)
    return 2
