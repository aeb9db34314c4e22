"""The live web view of ``netvlad-run --serve [HOST:]PORT``: the current frame, the best-matching map image,
confidence and verdict, and the map's places with the estimated track, in any browser, from the standard
library alone (``http.server`` + Server-Sent Events).

- Every asset ships in the package (``runtime/outputs/web/static``): no CDN, a robot often has no internet.
- Only the map's own images are served, by place id (``/map-image/<id>``); no request path reaches the
  filesystem, so path traversal has nothing to traverse (refused with 404).
- Slow clients never hold the localiser back: :meth:`LiveView.publish` only swaps in the newest state; each
  client's stream sends the newest state when it is ready for it, so updates it was too slow for are dropped
  (counted), never queued. Frames are sent as small JPEGs (``FRAME_WIDTH`` pixels wide), encoded once per
  update and only when a client asks for it.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import logging
import threading
import time
from collections import deque
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

import cv2
import numpy as np

from runtime.errors import ConfigError
from runtime.localize.localizer import Localization

log = logging.getLogger(__name__)

FRAME_WIDTH = 320  # pixels: the frame and map images sent to browsers
JPEG_QUALITY = 70
MAX_PLACES_SENT = 20000  # the map's places drawn in the browser (evenly thinned beyond this)
TRACK_KEPT = 5000  # estimated positions a newly connected page gets
KEEPALIVE_S = 15.0
ASSETS = {  # request path -> (file in runtime/outputs/web/static, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}


def parse_address(spec: str | int) -> tuple[str, int]:
    """``"8080"``, ``":8080"`` or ``"0.0.0.0:8080"`` -> (host, port); the default host is 127.0.0.1."""
    text = str(spec).strip()
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise ConfigError(f"--serve expects [HOST:]PORT, e.g. 8080 or 0.0.0.0:8080, got {text!r}")
    return (host.strip("[]") or "127.0.0.1"), number


def small_jpeg(image: np.ndarray, width: int = FRAME_WIDTH) -> bytes:
    """A BGR image as JPEG bytes, ``width`` pixels wide (aspect kept)."""
    h, w = image.shape[:2]
    if w > width:
        image = cv2.resize(image, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return data.tobytes() if ok else b""


class _Update:
    """One published state; the frame is JPEG-encoded at most once, by the first client that sends it."""

    def __init__(self, seq: int, loc: Localization, frame: np.ndarray | None) -> None:
        self.seq, self.loc, self._frame = seq, loc, frame
        self._event: bytes | None = None
        self._lock = threading.Lock()

    def event(self) -> bytes:
        with self._lock:
            if self._event is None:
                loc = self.loc
                record = {
                    "seq": self.seq,
                    "index": loc.index,
                    "source": loc.source,
                    "timestamp": loc.timestamp,
                    "easting": loc.position[0],
                    "northing": loc.position[1],
                    "lat": loc.lat,
                    "lon": loc.lon,
                    "heading": loc.heading,
                    "uncertainty_m": loc.uncertainty_m,
                    "confidence": loc.confidence,
                    "unknown": loc.unknown,
                    "best": {
                        "id": loc.best.place_id,
                        "image": loc.best.image,
                        "similarity": loc.best.similarity,
                    },
                    "frame": None,
                }
                if self._frame is not None:
                    record["frame"] = (
                        "data:image/jpeg;base64," + base64.b64encode(small_jpeg(self._frame)).decode()
                    )
                self._frame = None  # the encoded copy is all that is kept
                self._event = f"data: {json.dumps(record)}\n\n".encode()
            return self._event


class LiveView:
    """An HTTP server in a background thread showing what the localiser sees; use it in a ``with`` block.

    ``place_map``: the :class:`~runtime.map.PlaceMap` being localised against (its places and images).
    ``port`` 0 picks a free port (see :attr:`url`).
    """

    def __init__(self, place_map, host: str = "127.0.0.1", port: int = 8080) -> None:
        self.map = place_map
        self._changed = threading.Condition()
        self._latest: _Update | None = None
        self._seq = 0
        self._track: deque = deque(maxlen=TRACK_KEPT)
        self._closing = threading.Event()
        self.stats = {"published": 0, "sent": 0, "dropped": 0, "clients": 0}
        handler = functools.partial(_Handler, self)
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve on {host}:{port} ({exc.strerror or exc}); choose another --serve port"
            ) from None
        self._server.daemon_threads = True
        self.host, self.port = host, self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="live view", daemon=True)
        self._thread.start()
        log.info("live view on %s", self.url)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def publish(self, loc: Localization, frame: np.ndarray | None = None) -> None:
        """Make ``loc`` (and its BGR ``frame``, default ``loc.frame``) the newest state; never blocks."""
        with self._changed:
            self._seq += 1
            self._latest = _Update(self._seq, loc, loc.frame if frame is None else frame)
            self._track.append((round(loc.position[0], 2), round(loc.position[1], 2)))
            self.stats["published"] += 1
            self._changed.notify_all()

    def _next(self, after: int, timeout: float) -> _Update | None:
        with self._changed:
            self._changed.wait_for(
                lambda: self._closing.is_set() or (self._latest is not None and self._latest.seq > after),
                timeout,
            )
            latest = self._latest
            return latest if latest is not None and latest.seq > after else None

    def places_json(self) -> bytes:
        places = self.map.places
        rows = np.linspace(0, len(places) - 1, min(len(places), MAX_PLACES_SENT)).astype(np.int64)
        geo = self.map.geo
        return json.dumps(
            {
                "name": self.map.meta.get("name"),
                "count": len(places),
                "easting": np.round(places.utm[rows, 0], 2).tolist(),
                "northing": np.round(places.utm[rows, 1], 2).tolist(),
                "zone": None if geo is None else geo.label,
            }
        ).encode()

    def track_json(self) -> bytes:
        with self._changed:
            return json.dumps(list(self._track)).encode()

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one LiveView per run; bounded
    def map_image(self, place_id: int) -> bytes:
        image = cv2.imread(str(self.map.image_path(place_id)), cv2.IMREAD_COLOR)
        return b"" if image is None else small_jpeg(image)

    def close(self) -> None:
        """Stop serving (open streams end); idempotent."""
        if self._closing.is_set():
            return
        self._closing.set()
        with self._changed:
            self._changed.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LiveView:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    server_version = "netvlad-kit"

    def __init__(self, view: LiveView, *args, **kwargs) -> None:
        self.view = view
        super().__init__(*args, **kwargs)

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, body: bytes, content_type: str, status: HTTPStatus = HTTPStatus.OK) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _not_found(self) -> None:
        self._send(b"not found\n", "text/plain; charset=utf-8", HTTPStatus.NOT_FOUND)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ASSETS:
            name, content_type = ASSETS[path]
            self._send(
                resources.files("runtime.outputs.web").joinpath("static", name).read_bytes(), content_type
            )
        elif path == "/places.json":
            self._send(self.view.places_json(), "application/json")
        elif path == "/track.json":
            self._send(self.view.track_json(), "application/json")
        elif path.startswith("/map-image/"):
            self._map_image(path.removeprefix("/map-image/"))
        elif path == "/events":
            self._events()
        else:
            self._not_found()

    def _map_image(self, text: str) -> None:
        # only a place id of this map: no part of the request ever becomes a file path
        if not text.isdigit() or int(text) >= len(self.view.map.places):
            self._not_found()
            return
        body = self.view.map_image(int(text))
        if not body:
            self._not_found()
            return
        self._send(body, "image/jpeg")

    def _events(self) -> None:
        view = self.view
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        view.stats["clients"] += 1
        with view._changed:  # the newest state is sent first; what came before this client is not "dropped"
            last = max(0, view._seq - 1)
        last_write = time.monotonic()
        try:
            while not view._closing.is_set():
                update = view._next(last, timeout=1.0)
                if update is None:
                    if time.monotonic() - last_write > KEEPALIVE_S:
                        self.wfile.write(b": keepalive\n\n")
                        self.wfile.flush()
                        last_write = time.monotonic()
                    continue
                view.stats["dropped"] += update.seq - last - 1  # updates this client was too slow for
                self.wfile.write(update.event())  # blocks while this client is slow; publishing does not
                self.wfile.flush()
                view.stats["sent"] += 1
                last, last_write = update.seq, time.monotonic()
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass  # the page was closed
        finally:
            view.stats["clients"] -= 1
            with contextlib.suppress(Exception):
                self.close_connection = True
