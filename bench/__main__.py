"""`make bench`: run every benchmark in this folder, each printing its figure beside a
baseline measured in the same run."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main() -> int:
    here = Path(__file__).parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    for name in names:
        print(f"== {name}", flush=True)
        module = importlib.import_module(f"bench.{name}")
        module.main(sys.argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
