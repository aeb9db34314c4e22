"""The error boundary every command shares (runtime.cli.console.command_boundary): one line, one exit code."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from runtime.cli.console import BUG_HINT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, command_boundary
from runtime.errors import ConfigError, DatasetError, ParityError, RunFailedError

REPO_ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _app(raise_what: BaseException | None):
    app = typer.Typer(add_completion=False)

    @app.command()
    @command_boundary
    def main(count: int = typer.Option(1, min=1), verbose: int = typer.Option(0, "-v", count=True)) -> None:
        """A command that fails the way it is told to."""
        if raise_what is not None:
            raise raise_what
        typer.echo(f"ok {count}")

    return app


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (ConfigError("--top-k must be >= 1, got 0"), EXIT_USAGE, "error: --top-k must be >= 1, got 0"),
        (DatasetError("row 3:\n  bad"), EXIT_USAGE, "error: row 3: bad"),
        (RunFailedError("descriptors are NaN"), EXIT_FAILED, "error: descriptors are NaN"),
        (ParityError("INT8 missed its gate"), EXIT_FAILED, "error: INT8 missed its gate"),
        (OSError(errno.ENOSPC, "No space left on device", "/x/map"), EXIT_FAILED,
         "error: No space left on device ('/x/map')"),
        (PermissionError(errno.EACCES, "Permission denied", "/ro/out.jsonl"), EXIT_FAILED,
         "error: Permission denied ('/ro/out.jsonl')"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/proc/x"), EXIT_USAGE,
         "error: No such file or directory ('/proc/x')"),
    ],
)  # fmt: skip
def test_kit_and_environment_errors_become_one_line_and_their_exit_code(error, code, line):
    result = runner.invoke(_app(error), [])
    assert result.exit_code == code
    assert result.output == line + "\n"  # one line, no traceback
    assert "Traceback" not in result.output


def test_an_os_error_without_a_path_is_a_bug():
    bug = runner.invoke(_app(FileNotFoundError(errno.ENOENT, "No such file or directory")), [])
    assert bug.exit_code == EXIT_FAILED and "Traceback" in bug.output and bug.output.endswith(BUG_HINT + "\n")


def test_ctrl_c_exits_130_and_a_bug_keeps_its_traceback_with_the_hint():
    interrupted = runner.invoke(_app(KeyboardInterrupt()), [])
    assert interrupted.exit_code == EXIT_INTERRUPTED and interrupted.output == "\ninterrupted\n"
    bug = runner.invoke(_app(ZeroDivisionError("division by zero")), [])
    assert bug.exit_code == EXIT_FAILED
    assert "Traceback (most recent call last)" in bug.output
    assert bug.output.endswith(f"ZeroDivisionError: division by zero\nerror: {BUG_HINT}\n")


def test_usage_errors_and_success_pass_through_click():
    assert runner.invoke(_app(None), ["--count", "3"]).output == "ok 3\n"
    bad = runner.invoke(_app(None), ["--count", "0"])
    assert bad.exit_code == 2 and "Invalid value for '--count'" in bad.output


def test_an_argparse_main_keeps_its_return_value_and_argparse_exit():
    @command_boundary
    def main(argv=None) -> int:
        if argv == ["bad"]:
            raise ConfigError("bad thing")
        return 7

    assert main([]) == 7
    with pytest.raises(SystemExit) as exc:
        main(["bad"])
    assert exc.value.code == EXIT_USAGE


@pytest.mark.slow
def test_sigterm_during_a_command_exits_130_through_the_boundary(tmp_path):
    script = tmp_path / "sleepy.py"
    script.write_text(
        "import sys, time\nfrom runtime.cli.console import command_boundary\n"
        "@command_boundary\ndef main():\n    print('ready', flush=True)\n    time.sleep(30)\n"
        "    return 0\nsys.exit(main())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )
    assert proc.stdout.readline() == "ready\n"
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == EXIT_INTERRUPTED and err == "\ninterrupted\n"


KIT_APPS = (
    "runtime.cli.run",
    "runtime.cli.map",
    "export.cli",
    "export.measure",
    "benchmarks.cli",
    "benchmarks.demo",
    "training.train",
    "training.evaluate",
    "training.compare",
    "training.split",
    "training.plot",
    "training.synth.__main__",
    "training.synth.difficulty",
)


def _help_pages(module_name: str) -> dict[str, str]:
    """``--help`` of a command and of each of its subcommands, as a wide terminal would print them."""
    import importlib

    import typer
    from typer.testing import CliRunner

    app = importlib.import_module(module_name).app
    command = typer.main.get_command(app)
    subcommands = [[]] + [[name] for name in getattr(command, "commands", {})]
    runner = CliRunner()
    pages = {}
    for sub in subcommands:
        result = runner.invoke(app, [*sub, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        pages[" ".join([module_name, *sub])] = result.output
    return pages


@pytest.mark.parametrize("module_name", KIT_APPS)
def test_help_reads_in_80_columns_without_placeholders_on_flags(module_name):
    if module_name.startswith(("training", "export", "benchmarks")):
        pytest.importorskip("torch")
    pages = _help_pages(module_name)
    for name, page in pages.items():
        assert "Usage:" in page and "--help" in page, name
        assert "<bool>" not in page, f"{name}: a flag shows a value placeholder"
        assert "╭" not in page, f"{name}: box drawing (the rich layout) in --help"
        wide = [line for line in page.splitlines() if len(line) > 80]
        assert wide == [], f"{name}: lines over 80 columns"
    if module_name == "runtime.cli.run":
        page = pages[module_name]
        assert "--temporal / --no-temporal" in page and "--model <path>" in page
