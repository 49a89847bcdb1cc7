"""Benchmarks (not tests). Run ``make bench`` or ``.venv/bin/python bench/engine.py``."""
