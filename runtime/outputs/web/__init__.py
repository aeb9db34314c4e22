"""The live web view (``netvlad-run --serve``): :class:`LiveView`, stdlib HTTP + Server-Sent Events."""

from runtime.outputs.web.server import LiveView, parse_address

__all__ = ["LiveView", "parse_address"]
