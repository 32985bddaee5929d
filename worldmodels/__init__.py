"""World Models (Ha & Schmidhuber 2018) with dream-like imagination (Franceschelli & Musolesi 2024)."""

__version__ = "0.1.0"
