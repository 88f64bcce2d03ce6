"""The viewer's HTTP server: a fixed set of routes over the panes it was given (no file paths in URLs, no listings)."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import histo
from histo.errors import HistoError
from histo.view.sources import Layer, Pane
from histo.view.tiles import DeepZoom

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
_STATIC = {"openseadragon.min.js": "text/javascript", "viewer.js": "text/javascript", "viewer.css": "text/css",
           "LICENSE.openseadragon.txt": "text/plain"}
_ROUTES = (
    ("index", re.compile(r"/(?:index\.html)?")),
    ("static", re.compile(r"/static/([A-Za-z0-9_.-]+)")),
    ("view", re.compile(r"/view\.json")),
    ("dzi", re.compile(r"/slide/(\d{1,3})\.dzi")),
    ("tile", re.compile(r"/slide/(\d{1,3})_files/(\d{1,2})/(\d{1,6})_(\d{1,6})\.jpeg")),
    ("layer", re.compile(r"/layer/(\d{1,3})/([a-z]{1,20})\.(png|json)")),
)


def _resource(name: str) -> bytes:
    return resources.files("histo").joinpath("resources").joinpath("viewer").joinpath(name).read_bytes()


@dataclass
class ViewerApp:
    """Everything the server may send: the packaged viewer files, and per pane its tiles and layers."""

    panes: list[Pane]
    zooms: list[DeepZoom]
    command: str = ""
    _json: dict[tuple[int, str], bytes] = field(default_factory=dict)
    _json_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def build(cls, panes: list[Pane], command: str = "") -> ViewerApp:
        """Open every pane's slide for Deep Zoom reading; warm the slide handles and encode the layers meanwhile."""
        zooms = [DeepZoom(p.slide_path, mpp=p.mpp) for p in panes]
        app = cls(panes, zooms, command)
        for z in zooms:
            z.warm_in_background()
        threading.Thread(target=app.encode_layers, name="histo-view-layers", daemon=True).start()
        return app

    def encode_layers(self) -> None:
        """Encode every point and shape layer's JSON once (a slide's cells run to megabytes)."""
        for i, pane in enumerate(self.panes):
            for layer in pane.layers:
                if layer.kind != "raster":
                    self.layer_json(i, layer)

    def layer_json(self, index: int, layer: Layer) -> bytes:
        """The JSON body of a point or shape layer, encoded on first use."""
        key = (index, layer.id)
        with self._json_lock:
            body = self._json.get(key)
            if body is None:
                body = self._json[key] = json.dumps(layer.data, separators=(",", ":")).encode()
        return body

    def close(self) -> None:
        """Close the slides."""
        for z in self.zooms:
            z.close()

    def view_json(self) -> dict[str, Any]:
        """The description the page reads: panes, their sizes, µm/px, layers and measurements."""
        out = []
        for i, (p, z) in enumerate(zip(self.panes, self.zooms)):
            out.append({"index": i, "title": p.title, "kind": p.kind, "width_px": z.width_px, "height_px": z.height_px,
                        "mpp": z.mpp, "dzi": f"slide/{i}.dzi",
                        "tile_px": z.tile_px, "max_level": z.max_level, "layers": [layer.meta() for layer in p.layers],
                        "measurements": [[str(k), "n/a" if v is None else str(v)] for k, v in p.measurements]})
        return {"panes": out, "histo_version": histo.__version__, "command": self.command}

    def respond(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) of a GET path; 404 for anything not a route."""
        for name, rx in _ROUTES:
            m = rx.fullmatch(path)
            if m is None:
                continue
            try:
                return self._route(name, m.groups())
            except (HistoError, IndexError, KeyError):
                return _not_found()
        return _not_found()

    def _route(self, name: str, g: tuple[str, ...]) -> tuple[int, str, bytes]:
        if name == "index":
            return 200, "text/html; charset=utf-8", _resource("index.html")
        if name == "static":
            if g[0] not in _STATIC:
                return _not_found()
            return 200, _STATIC[g[0]], _resource(g[0])
        if name == "view":
            return 200, "application/json", json.dumps(self.view_json()).encode()
        if name == "dzi":
            return 200, "application/xml", self.zooms[int(g[0])].dzi_xml().encode()
        if name == "tile":
            return 200, "image/jpeg", self.zooms[int(g[0])].tile(int(g[1]), int(g[2]), int(g[3]))
        pane = self.panes[int(g[0])]
        layer = next((la for la in pane.layers if la.id == g[1]), None)
        if layer is None:
            return _not_found()
        if layer.kind == "raster" and g[2] == "png" and isinstance(layer.data, bytes):
            return 200, "image/png", layer.data
        if layer.kind != "raster" and g[2] == "json":
            return 200, "application/json", self.layer_json(int(g[0]), layer)
        return _not_found()


def _not_found() -> tuple[int, str, bytes]:
    return 404, "text/plain; charset=utf-8", b"not found\n"


def make_handler(app: ViewerApp) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``app``."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "histo-view"
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall per tile

        def do_GET(self) -> None:
            self._send(*app.respond(urlsplit(self.path).path), head=False)

        def do_HEAD(self) -> None:
            self._send(*app.respond(urlsplit(self.path).path), head=True)

        def _send(self, status: int, ctype: str, body: bytes, head: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Cache-Control", "no-cache" if ctype.startswith(("text/html", "application/json"))
                             else "max-age=3600")
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    for verb in ("POST", "PUT", "DELETE", "PATCH"):
        setattr(Handler, f"do_{verb}", lambda self: self._send(HTTPStatus.METHOD_NOT_ALLOWED, "text/plain", b"", False))
    return Handler


class ViewerServer:
    """A running viewer: ``url``; ``serve_forever()`` in the foreground or ``start()`` in a thread."""

    def __init__(self, app: ViewerApp, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
        self.app = app
        try:
            self.httpd = ThreadingHTTPServer((host, port), make_handler(app))
        except OSError as exc:
            raise HistoError(f"cannot listen on {host}:{port} ({exc}); pick another --port") from exc
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The address to open."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host if isinstance(host, str) else host.decode()}:{port}/"

    def start(self) -> ViewerServer:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="histo-view", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve until interrupted."""
        self.httpd.serve_forever()

    def stop(self) -> None:
        """Stop serving and close the slides."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.app.close()
