"""Where answers go: the results bag (:mod:`runtime.outputs.bag`, NavSatFix and pose per frame), the overlay
video (:mod:`runtime.outputs.overlay`) and the live web view (:mod:`runtime.outputs.web`); the JSONL
records are written by the run session (:mod:`runtime.cli.session`). Each output consumes
:class:`~runtime.localize.Localization` records and never changes them. May import localize, map and the
shared top-level modules; the Localizer never imports an output.
"""
