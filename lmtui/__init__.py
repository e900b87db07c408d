"""lmtui: a terminal dashboard and controller for a cluster of local LLM servers."""

__version__ = "0.1.0"
