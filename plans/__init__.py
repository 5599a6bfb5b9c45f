"""SYNAPS Agent plans."""
