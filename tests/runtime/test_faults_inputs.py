"""Fault injection, inputs and sources: every bad input ends in one clear error (exact message, exit code),
a counted skip, or a clean end; never a hang, a segfault or a silent wrong answer. Real ONNX Runtime
sessions, real FAISS maps, real image files and a real (silent) TCP server."""

from __future__ import annotations

import dataclasses
import re
import socket
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from runtime import Localizer, LocalizerConfig, RunConfig
from runtime.cli.map import app as map_app
from runtime.cli.run import app as run_app
from runtime.errors import ConfigError, ModelCardError, RunFailedError, SourceError
from runtime.model.card import read_onnx_card
from runtime.sources import CameraSource, ImageFolderSource, RetryPolicy, RtspSource, VideoFileSource
from tests.runtime.helpers import make_onnx_model, make_stand_in_world

runner = CliRunner()


def _one_line(result) -> str:
    return " ".join(result.output.split())


def _finishes(fn, timeout_s: float = 20.0):
    """Run ``fn`` in a thread; its result, or a failure if it is still running after ``timeout_s`` (a hang)."""
    box: list = []

    def call() -> None:
        try:
            box.append(("ok", fn()))
        except BaseException as exc:
            box.append(("raised", exc))

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"{fn} hung"
    how, value = box[0]
    if how == "raised":
        raise value
    return value


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults-in")
    model, _card = make_onnx_model(root / "model.onnx")
    dataset = make_stand_in_world(root / "data", places=12, seed=7)
    result = runner.invoke(
        map_app, ["build", "--model", str(model), "--dataset", str(dataset.root), "--out", str(root / "map")]
    )
    assert result.exit_code == 0, result.output
    return root, model, dataset


def _images(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:03d}.png"), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    return folder


def _truncated_jpeg(path: Path) -> Path:
    image = np.random.default_rng(1).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    path.write_bytes(data.tobytes()[: len(data) // 2])
    return path


# -- sources -------------------------------------------------------------------------------------------
def test_an_exhausted_source_iterated_again_returns_at_once(tmp_path):
    source = ImageFolderSource(_images(tmp_path / "imgs"))
    assert len(_finishes(lambda: list(source))) == 3
    assert _finishes(lambda: list(source)) == []  # used to block forever
    source.close()
    assert _finishes(lambda: list(source)) == []


def test_localizer_run_on_a_consumed_source_returns_at_once(world, tmp_path):
    root, model, dataset = world
    with Localizer.open(model, root / "map") as localizer:
        source = ImageFolderSource(dataset.root / "queries")
        assert len(_finishes(lambda: list(localizer.run(source)))) == 12
        assert _finishes(lambda: list(localizer.run(source))) == []


@pytest.mark.parametrize("index", [-1, 10_000, 99_999_999_999])
def test_a_camera_index_out_of_range_is_refused_before_opencv_sees_it(world, index):
    root, model, _ = world
    with pytest.raises(ConfigError) as exc:
        CameraSource(index)
    assert str(exc.value) == (
        f"camera index must be an integer from 0 to 9999 (0 is the first camera, /dev/video0), got {index}"
    )
    result = runner.invoke(
        run_app, ["--camera", str(index), "--model", str(model), "--map", str(root / "map")]
    )
    assert result.exit_code == 2 and _one_line(result) == (
        f"error: --camera must be a camera index from 0 to 9999 (0 is the first camera, /dev/video0), got {index}"
    )


def test_a_truncated_jpeg_is_corrupt_in_the_runtime_as_in_the_map_builder(world, tmp_path):
    from runtime.datasets.place import read_rgb

    _root, _model, _ = world
    folder = _images(tmp_path / "imgs", 2)
    bad = _truncated_jpeg(folder / "002.jpg")
    with pytest.raises(Exception, match="cannot be decoded"):
        read_rgb(bad)  # the map builder's reader
    source = ImageFolderSource(folder)
    assert [f.source for f in _finishes(lambda: list(source))] == ["000.png", "001.png"]
    assert source.stats.corrupt == 1


def test_a_folder_of_only_corrupt_images_is_an_error(world, tmp_path):
    root, model, _ = world
    folder = tmp_path / "bad"
    folder.mkdir()
    _truncated_jpeg(folder / "a.jpg")
    (folder / "b.png").write_bytes(b"")
    with pytest.raises(SourceError) as exc:
        _finishes(lambda: list(ImageFolderSource(folder)))
    message = (
        f"image folder '{folder}': none of its 2 images can be decoded (all are truncated, empty or not "
        "images); replace them"
    )
    assert str(exc.value) == message
    result = runner.invoke(
        run_app, ["--images", str(folder), "--model", str(model), "--map", str(root / "map")]
    )
    assert result.exit_code == 2 and _one_line(result).endswith(f"error: {message}")


def test_the_kind_of_source_must_fit_the_flag(tmp_path):
    folder = _images(tmp_path / "imgs", 1)
    with pytest.raises(SourceError) as exc:
        VideoFileSource(folder)
    assert (
        str(exc.value) == f"'{folder}' is a folder, not a video file; pass a folder of images with --images"
    )
    with pytest.raises(SourceError) as exc:
        ImageFolderSource(folder / "000.png")
    assert (
        str(exc.value)
        == f"'{folder / '000.png'}' is a file, not a folder of images; pass a video file with --video"
    )


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never says a word (a hung RTSP camera)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []

    def accept():
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"rtsp://127.0.0.1:{server.getsockname()[1]}/stream"
    server.close()
    for conn in held:
        conn.close()


@pytest.mark.slow
def test_a_silent_rtsp_server_fails_in_the_time_its_message_says(silent_server):
    source = RtspSource(silent_server, retry=RetryPolicy(attempts=2, delay_s=0.1, open_timeout_s=1.0))
    with pytest.raises(SourceError) as exc:
        _finishes(lambda: list(source), timeout_s=60)
    match = re.fullmatch(
        rf"stream {re.escape(silent_server)}: opening failed after 2 attempts over ([0-9.]+) s; each attempt "
        r"waits up to 1 s; check the URL, the network and the camera's credentials",
        str(exc.value),
    )
    assert match is not None, str(exc.value)
    assert float(match.group(1)) >= 2.0  # what it reports covers both timed-out opens and the pause


@pytest.mark.slow
def test_closing_a_stream_stuck_in_its_open_does_not_wait_for_the_open(silent_server):
    source = RtspSource(silent_server, retry=RetryPolicy(attempts=1, open_timeout_s=4.0))
    source.start()
    threading.Event().wait(0.5)  # the decoder is now inside FFmpeg's open, for up to 4 s
    _finishes(lambda: source.close(timeout_s=0.5), timeout_s=10)
    assert source._thread.is_alive()  # left to finish on its own: close() did not wait 4 s for it
    source._thread.join(20)  # it does finish (FFmpeg's timeout), leaving no thread behind for later tests
    assert not source._thread.is_alive()


# -- numbers on the command line -----------------------------------------------------------------------
@pytest.mark.parametrize(("value", "shown"), [("nan", "nan"), ("-5", "-5.0"), ("2", "2.0")])
def test_min_confidence_must_be_a_confidence_from_0_to_1(world, value, shown):
    root, model, dataset = world
    args = ["--images", str(dataset.root / "queries"), "--model", str(model), "--map", str(root / "map")]
    result = runner.invoke(run_app, [*args, "--min-confidence", value])
    assert result.exit_code == 2 and _one_line(result) == (
        f"error: --min-confidence must be a confidence from 0 to 1, got {shown} (omit it to use the map's "
        "calibrated operating point, shown by netvlad-map info)"
    )


def test_other_run_numbers_are_checked(world):
    root, model, dataset = world
    base = {"model": model, "map": root / "map", "images": dataset.root / "queries"}
    with pytest.raises(ConfigError, match=r"^--threads must be >= 0 \(0: one per core\), got -1$"):
        RunConfig(**base, threads=-1)
    with pytest.raises(ConfigError, match=r"^loop and max_frames must be >= 1, got 1 and 0$"):
        RunConfig(**base, max_frames=0)
    with pytest.raises(ConfigError, match="invalid localizer config"):
        LocalizerConfig(top_k=0)
    with pytest.raises(ConfigError, match="invalid localizer config"):
        LocalizerConfig(position_radius_m=float("nan"))


# -- the model against its card, its descriptors against the contract ------------------------------------
def _nan_model(src: Path, dst: Path) -> Path:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    for i, init in enumerate(model.graph.initializer):
        if init.name == "projection":
            nan = np.full(numpy_helper.to_array(init).shape, np.nan, np.float32)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(nan, "projection"))
    onnx.save(model, str(dst))
    return dst


def test_a_model_that_outputs_nan_fails_the_map_build_naming_the_model(world, tmp_path):
    _root, model, dataset = world
    nan_model = _nan_model(model, tmp_path / "nan.onnx")
    result = runner.invoke(
        map_app,
        ["build", "--model", str(nan_model), "--dataset", str(dataset.root), "--out", str(tmp_path / "m")],
    )
    assert result.exit_code == 1 and _one_line(result).endswith(
        f"error: model '{nan_model}' returned non-finite (NaN or infinite) descriptors for 12 of 12 images; "
        "the model is broken: re-export it with netvlad-export and check its parity report"
    )
    assert not (tmp_path / "m").exists()
    from runtime import open_backend

    with open_backend(nan_model) as backend, pytest.raises(RunFailedError, match="non-finite"):
        backend.infer(np.zeros((2, 48, 64, 3), np.uint8))


def test_a_card_whose_input_size_differs_from_the_graph_is_refused(world, tmp_path):
    import onnx

    from runtime import open_backend
    from runtime.model.card import attach_to_onnx

    _, model, _ = world
    proto = onnx.load(str(model))
    attach_to_onnx(proto, dataclasses.replace(read_onnx_card(model), input_height=40))
    lying = tmp_path / "lying.onnx"
    onnx.save(proto, str(lying))
    with pytest.raises(ModelCardError) as exc:
        open_backend(lying)
    assert str(exc.value) == (
        f"'{lying}': its model card says input (N, 40, 64, 3) but the graph takes ('N', 48, 64, 3); the card "
        "does not describe this graph: re-export it with netvlad-export"
    )


# -- map files and scored runs ---------------------------------------------------------------------------
def _copy_map(root: Path, dst: Path) -> Path:
    import shutil

    return Path(shutil.copytree(root / "map", dst))


def test_a_damaged_places_csv_or_map_json_is_one_line_exit_2(world, tmp_path):
    root, model, dataset = world
    args = ["--images", str(dataset.root / "queries"), "--model", str(model), "-q"]
    nan_map = _copy_map(root, tmp_path / "nan")
    places = (nan_map / "places.csv").read_text().splitlines()
    fields = places[3].split(",")
    fields[2] = "nan"
    places[3] = ",".join(fields)
    (nan_map / "places.csv").write_text("\n".join(places) + "\n")
    result = runner.invoke(run_app, [*args, "--map", str(nan_map)])
    assert result.exit_code == 2 and _one_line(result) == (
        f"error: '{nan_map / 'places.csv'}' row 4 is malformed (easting is 'nan', not a finite number); "
        "rebuild the map"
    )
    bad_meta = _copy_map(root, tmp_path / "meta")
    import json

    meta = json.loads((bad_meta / "map.json").read_text())
    del meta["model"]["fingerprint"]
    (bad_meta / "map.json").write_text(json.dumps(meta))
    result = runner.invoke(run_app, [*args, "--map", str(bad_meta)])
    assert result.exit_code == 2 and _one_line(result) == (
        f"error: '{bad_meta / 'map.json'}' field 'model.fingerprint' must be a non-empty string, found None; "
        "the map is damaged or was edited by hand: rebuild it with netvlad-map build"
    )


def test_a_jsonl_scored_against_another_dataset_is_refused(world, tmp_path):
    root, model, dataset = world
    jsonl = tmp_path / "run.jsonl"
    args = ["--images", str(dataset.root / "queries"), "--model", str(model), "--map", str(root / "map")]
    assert runner.invoke(run_app, [*args, "--jsonl", str(jsonl), "-q"]).exit_code == 0
    other = tmp_path / "other"
    other.mkdir()
    for split in ("database", "queries"):
        (other / split).mkdir()
        _images(other / split, 2)
    (other / "database.csv").write_text(
        "image,easting,northing\ndatabase/000.png,0,0\ndatabase/001.png,30,0\n"
    )
    (other / "queries.csv").write_text("image,easting,northing\nqueries/q0.png,0,1\nqueries/q1.png,30,1\n")
    for i in range(2):
        (other / "queries" / f"{i:03d}.png").rename(other / "queries" / f"q{i}.png")
    result = runner.invoke(map_app, ["recall", "--jsonl", str(jsonl), "--dataset", str(other)])
    assert result.exit_code == 2 and _one_line(result) == (
        f"error: 12 of 12 records of '{jsonl}' name no query of dataset 'other' (for example '0000.png', while "
        "its queries are named like 'q0.png'); score the JSONL against the dataset whose queries were localised"
    )
    result = runner.invoke(map_app, ["recall", "--jsonl", str(jsonl), "--dataset", str(dataset.root)])
    assert result.exit_code == 0, result.output


def test_a_zero_byte_checkpoint_is_one_line_in_export_and_evaluate(tmp_path):
    pytest.importorskip("torch", reason="needs torch (pip install 'netvlad-kit[train]')")
    from export.cli import app as export_app
    from training.evaluate import main as evaluate_main

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    expected = (
        f"error: checkpoint '{empty}' cannot be read (EOFError: 0 bytes); it is truncated, corrupt or not a "
        "netvlad-kit checkpoint. Use another checkpoint or train one with: python -m training.train"
    )
    result = runner.invoke(export_app, [str(empty), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and _one_line(result).startswith(expected)
    with pytest.raises(SystemExit) as exc:
        evaluate_main([str(empty), "--dataset", str(tmp_path)])
    assert exc.value.code == 2


def test_an_index_faiss_from_another_map_is_refused(world, tmp_path):
    root, model, dataset = world
    other_model, _ = make_onnx_model(
        tmp_path / "other.onnx", seed=3
    )  # same size and dimension, other weights
    other = tmp_path / "other-map"
    assert (
        runner.invoke(
            map_app,
            ["build", "--model", str(other_model), "--dataset", str(dataset.root), "--out", str(other)],
        ).exit_code
        == 0
    )
    swapped = _copy_map(root, tmp_path / "swapped")
    (swapped / "index.faiss").write_bytes((other / "index.faiss").read_bytes())
    import json

    recorded = json.loads((swapped / "map.json").read_text())["index_file"]
    found = json.loads((other / "map.json").read_text())["index_file"]
    assert recorded != found
    result = runner.invoke(
        run_app,
        ["--images", str(dataset.root / "queries"), "--model", str(model), "--map", str(swapped), "-q"],
    )
    assert result.exit_code == 2 and _one_line(result) == (
        f"error: '{swapped / 'index.faiss'}' is not the index this map was built with (map.json records "
        f"{recorded}, the file is {found}): it was replaced, perhaps by another map's or model's; rebuild the map "
        "with netvlad-map build"
    )


@pytest.mark.slow
def test_ctrl_c_while_a_stream_is_opening_ends_the_run_with_130(world, silent_server, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    root, model, _ = world
    repo = Path(__file__).resolve().parents[2]
    jsonl = tmp_path / "run.jsonl"
    code = "from runtime.cli.run import app; app()"
    args = ["--model", str(model), "--map", str(root / "map"), "--rtsp", silent_server, "--jsonl", str(jsonl)]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args, "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    threading.Event().wait(4.0)  # the stream's open (up to 5 s per attempt) is under way
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)  # it used to take 25-50 s: a hang here fails the test
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.rstrip().endswith("interrupted")
    assert jsonl.read_text() == ""  # flushed and closed, with no frame in it
