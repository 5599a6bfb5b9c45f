"""SYNAPS Agent: autonomous X-ray and neutron imaging inside Bluesky."""

__version__ = "0.1.0"
