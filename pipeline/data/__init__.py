"""Bringing data in: image folders and the embedded digits to TFRecords, curated schemas.

Tools run by the CLI, never inside a step (so editing them re-runs no step).
"""
