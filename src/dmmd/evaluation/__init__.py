"""Evaluation: sample-quality metrics and diversity diagnostics."""
