"""The command line on top of everything: ``netvlad-map`` (:mod:`runtime.cli.map`) and ``netvlad-run``
(:mod:`runtime.cli.run`) parse and call one function each; :mod:`runtime.cli.session` is that function for
``netvlad-run`` (a source through the Localizer to JSONL, bag, overlay and web view), and
:mod:`runtime.cli.console` and :mod:`runtime.cli.options` are the logging, progress, exit codes and shared
options every command of the kit (training, export and benchmarks too) uses. May import every runtime
package; no runtime package below imports it.
"""
