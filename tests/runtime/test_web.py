"""The live web view: real HTTP, real Server-Sent Events, a real headless Chromium driving the page."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import threading
import time

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from runtime import Localizer, LocalizerConfig, build_map
from runtime.cli.run import app as run_app
from runtime.datasets import load_generic
from runtime.errors import ConfigError
from runtime.outputs.web import LiveView, parse_address
from tests.runtime.helpers import make_onnx_model, make_stand_in_world
from tests.runtime.test_geo import to_latlon_csv

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    model, _ = make_onnx_model(root / "model.onnx")
    make_stand_in_world(root / "data", places=40)
    to_latlon_csv(root / "data")
    map_dir = build_map(model, load_generic(root / "data"), root / "map")
    config = LocalizerConfig(keep_frames=True)
    with Localizer.open(model, map_dir, config=config) as localizer:
        locs = [
            localizer.localize(
                cv2.imread(str(root / "data" / "queries" / f"{i:04d}.png")), timestamp=i, index=i
            )
            for i in range(40)
        ]
        yield {"root": root, "model": model, "map": map_dir, "place_map": localizer.map, "locs": locs}


def get(view: LiveView, path: str) -> tuple[int, bytes, str]:
    """A raw GET (the path is sent exactly as given, no client-side normalisation)."""
    connection = http.client.HTTPConnection(view.host, view.port, timeout=10)
    connection.putrequest("GET", path, skip_host=False, skip_accept_encoding=True)
    connection.endheaders()
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, body, response.getheader("Content-Type") or ""


def test_address_parsing():
    assert parse_address("8080") == ("127.0.0.1", 8080)
    assert parse_address(":9000") == ("127.0.0.1", 9000)
    assert parse_address("0.0.0.0:8080") == ("0.0.0.0", 8080)
    with pytest.raises(
        ConfigError, match=r"--serve expects \[HOST:\]PORT, e.g. 8080 or 0.0.0.0:8080, got 'web'"
    ):
        parse_address("web")


def test_assets_places_images_and_path_traversal(world):
    with LiveView(world["place_map"], port=0) as view:
        status, page, content_type = get(view, "/")
        assert status == 200 and content_type.startswith("text/html") and b"netvlad-kit live view" in page
        for asset in ("/", "/app.js", "/style.css"):  # everything ships in the package: no CDN, no URLs
            assert b"://" not in get(view, asset)[1]
        places = json.loads(get(view, "/places.json")[1])
        assert places["count"] == 40 and places["zone"] == "33N" and places["easting"][1] == 500030.0
        status, image, content_type = get(view, "/map-image/3")
        decoded = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
        assert status == 200 and content_type == "image/jpeg" and decoded.shape == (96, 128, 3)
        attacks = [
            "/map-image/../../../../etc/passwd",
            "/map-image/..%2f..%2f..%2fetc%2fpasswd",
            "/../../../../etc/passwd",
            "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
            "/map-image/3/../../places.csv",
            "/map-image/-1",
            "/map-image/40",
            "/map-image/database/0003.png",
            "/static/../map.json",
            "/places.csv",
            "/map.json",
        ]
        for path in attacks:
            status, body, _ = get(view, path)
            assert (status, body) == (404, b"not found\n"), path


def test_a_slow_client_gets_the_newest_update_not_a_queue(world):
    locs = world["locs"]
    with LiveView(world["place_map"], port=0) as view:
        view.publish(locs[0])
        connection = http.client.HTTPConnection(view.host, view.port, timeout=10)
        connection.request("GET", "/events")
        stream = connection.getresponse()
        assert stream.getheader("Content-Type") == "text/event-stream"

        def next_event() -> dict:
            line = stream.fp.readline()
            while not line.startswith(b"data: "):
                line = stream.fp.readline()
            return json.loads(line[6:])

        first = next_event()
        assert (
            first["seq"] == 1 and first["index"] == 0 and first["frame"].startswith("data:image/jpeg;base64,")
        )
        assert first["lat"] == pytest.approx(locs[0].lat) and first["best"]["id"] == 0
        with view._changed:  # 39 updates while this client is busy: it gets only the newest
            for loc in locs[1:]:
                view.publish(loc)
        newest = next_event()
        assert newest["seq"] == 40 and newest["index"] == 39 and view.stats["dropped"] == 38
        track = json.loads(get(view, "/track.json")[1])
        assert len(track) == 40 and track[39] == [
            round(locs[39].position[0], 2),
            round(locs[39].position[1], 2),
        ]
        connection.close()


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Chromium and its driver (apt-get install chromium chromium-driver)",
)
def test_page_in_headless_chromium_shows_frames_and_a_growing_track(world, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    stop = threading.Event()
    with LiveView(world["place_map"], port=0) as view:

        def robot() -> None:  # a robot localising at ~10 Hz, round and round the route
            i = 0
            while not stop.is_set():
                view.publish(world["locs"][i % 40])
                i += 1
                time.sleep(0.1)

        feeder = threading.Thread(target=robot, daemon=True)
        feeder.start()
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        try:
            driver.get(view.url)
            wait = WebDriverWait(driver, 30)
            state_js = (
                "return [Number(document.body.dataset.updates), document.getElementById('frame-index').textContent,"
                " Number(document.getElementById('map').dataset.trackPoints)]"
            )
            wait.until(lambda d: d.execute_script(state_js)[0] >= 2)
            updates, first_index, first_track = driver.execute_script(state_js)
            # frames advance and the track grows as the robot's updates arrive
            wait.until(lambda d: d.execute_script(state_js)[0] >= updates + 10)
            _, index, track = driver.execute_script(state_js)
            assert index != first_index and track >= first_track + 10
            assert driver.find_element(By.ID, "frame").get_attribute("src").startswith("data:image/jpeg")
            wait.until(lambda d: d.execute_script("return document.getElementById('match').naturalWidth") > 0)
            assert driver.find_element(By.ID, "verdict").text in ("known place", "unknown place")
            assert driver.find_element(By.ID, "connection").text == "live"
            assert "," in driver.find_element(By.ID, "latlon").text  # a geographic map: lat, lon shown
            shot = tmp_path / "live-view.png"
            assert driver.save_screenshot(str(shot))
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and cv2.imread(str(shot)).shape[1] >= 800
        finally:
            driver.quit()
            stop.set()
            feeder.join()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_netvlad_run_serves_while_it_localises(world):
    port = free_port()
    args = [
        "--model",
        str(world["model"]),
        "--map",
        str(world["map"]),
        "--images",
        str(world["root"] / "data" / "queries"),
    ]
    args += ["--serve", f"127.0.0.1:{port}", "--realtime", "-q"]  # 40 frames at 10 fps: about 4 s
    result = {}
    runner = threading.Thread(target=lambda: result.update(r=CliRunner().invoke(run_app, args)), daemon=True)
    runner.start()
    deadline, stream = time.monotonic() + 30, None
    while stream is None and time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/events")
            stream = connection.getresponse()
        except OSError:
            time.sleep(0.1)
    assert stream is not None and stream.status == 200
    indices = []
    while len(indices) < 5:
        line = stream.fp.readline()
        if not line:  # the run ended (and its server closed) before five updates: fail, don't hang
            break
        if line.startswith(b"data: "):
            indices.append(json.loads(line[6:])["index"])
    assert indices == sorted(indices) and indices[-1] > indices[0]  # live, in order, as the run goes
    connection.close()
    runner.join(timeout=60)
    assert result["r"].exit_code == 0, result["r"].output
