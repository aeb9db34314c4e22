"""Commands show the kit's own INFO lines, not other libraries' (onnxscript, faiss's loader), unless -vv."""

import logging

from runtime.cli.console import configure_logging


def _emit() -> None:
    logging.getLogger("onnxscript.rewriter").info("applied 12 rewrite rules")
    logging.getLogger("faiss.loader").info("Could not load library with AVX2 support")
    logging.getLogger("runtime.map.build").info("wrote map")
    logging.getLogger("netvlad-export").info("wrote model.onnx")
    logging.getLogger("onnx_ir").warning("a real warning")


def test_only_the_kits_info_lines_reach_the_console(capsys):
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        configure_logging()
        _emit()
        lines = [line.split(" ", 1)[1] for line in capsys.readouterr().err.splitlines()]
        assert lines == [
            "INFO    runtime.map.build: wrote map",
            "INFO    netvlad-export: wrote model.onnx",
            "WARNING onnx_ir: a real warning",
        ]
        configure_logging(verbose=2)  # -vv: everything
        _emit()
        assert len(capsys.readouterr().err.splitlines()) == 5
    finally:
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])


def test_progress_without_a_terminal_logs_every_ten_percent(capsys, monkeypatch):
    """A long step run into a log file (stderr not a terminal) still says how far it got."""
    import runtime.cli.console as console

    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        configure_logging()
        monkeypatch.setattr(console, "LOG_PROGRESS_SECONDS", 0.0)
        bar = console.progress(total=40, desc="parity", unit="img")
        for _ in range(10):
            bar.update(4)
        bar.close()
        assert list(console.progress(range(3), desc="rendering", unit="img")) == [0, 1, 2]
        lines = [line.split(": ", 1)[1] for line in capsys.readouterr().err.splitlines()]
        assert lines[:3] == [
            "parity: 4 of 40 img (10%, 0 s)",
            "parity: 8 of 40 img (20%, 0 s)",
            "parity: 12 of 40 img (30%, 0 s)",
        ]
        assert lines[9:] == ["parity: 40 of 40 img (100%, 0 s)", "rendering: 1 of 3 img (33%, 0 s)",
                             "rendering: 2 of 3 img (67%, 0 s)", "rendering: 3 of 3 img (100%, 0 s)"]  # fmt: skip
        monkeypatch.setattr(console, "LOG_PROGRESS_SECONDS", 3600.0)  # a quick step: nothing logged
        bar = console.progress(total=10, desc="quick")
        bar.update(10)
        assert capsys.readouterr().err == ""
    finally:
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])
