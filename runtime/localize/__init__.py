"""A frame becomes a position: the :class:`Localizer` preprocesses, infers, searches the map, matches the
sequence, adapts the query centre to the stream (:mod:`runtime.localize.adapt`), judges "unknown place" and
returns a :class:`Localization`, for one frame (``localize``) or a threaded stream (``run``, whose feeder,
inference and newest-frame rules are :mod:`runtime.localize.pipeline`). Per-stage latency statistics are
:mod:`runtime.localize.stats`. May import model, map, sources and the shared top-level modules; never
outputs or the command line, which sit on top of it.
"""

from runtime.localize.localizer import Localization, Localizer, LocalizerConfig, PlaceMatch, StageTimes

__all__ = ["Localization", "Localizer", "LocalizerConfig", "PlaceMatch", "StageTimes"]
