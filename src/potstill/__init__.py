"""potstill: distill a large teacher LLM into a small student, and prove what was kept and saved."""

__version__ = "0.1.0"
