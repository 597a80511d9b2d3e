"""Capture of per-layer attention records, their statistics, and the Report."""
