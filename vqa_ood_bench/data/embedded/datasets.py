"""Registers the embedded suite's splits as datasets (filled in by the embedded builder)."""
