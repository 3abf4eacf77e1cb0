"""The worker's benchmark (issue 6): run it as `scripts/bench`; see docs/performance.md."""
