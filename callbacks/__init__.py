"""SYNAPS Agent callbacks."""
