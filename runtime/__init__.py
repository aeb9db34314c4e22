"""netvlad-kit runtime: lean place recognition (no torch) from frames to positions.

Importing this package is cheap and side-effect free; heavy dependencies load when first used.
"""

from runtime.card import ModelCard
from runtime.errors import NetVLADKitError

__all__ = ["ModelCard", "NetVLADKitError"]
__version__ = "0.1.0"
