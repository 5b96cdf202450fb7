"""replicad: a replicated key-value store on Twisted."""

__version__ = "0.2.0"
