"""Thin entry points that `ray job submit` runs: `python -m jobs.<name>`."""
