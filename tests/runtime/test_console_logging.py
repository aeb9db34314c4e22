"""Commands show the kit's own INFO lines, not other libraries' (onnxscript, faiss's loader), unless -vv."""

import logging

from runtime.console import configure_logging


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
