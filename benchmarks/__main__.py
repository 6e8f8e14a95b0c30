"""``python -m benchmarks``: runs the planner benchmark (the lead may add more suites here)."""

from __future__ import annotations

from benchmarks.planner import main

if __name__ == "__main__":
    raise SystemExit(main())
