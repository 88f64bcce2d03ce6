"""The local web viewer: Deep Zoom tiles of a slide through histo.slide with every overlay of its results."""

from __future__ import annotations

import os

from histo.view.server import DEFAULT_HOST, DEFAULT_PORT, ViewerApp, ViewerServer
from histo.view.sources import Layer, Pane, load_panes
from histo.view.tiles import DeepZoom


def view_command(paths: list[str | os.PathLike[str]]) -> str:
    """The shell command that opens these folders in the viewer."""
    import shlex

    return "histo view " + " ".join(shlex.quote(str(p)) for p in paths)


def open_viewer(paths: list[str | os.PathLike[str]], host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> ViewerServer:
    """A server (not yet serving) for the given folders; port 0 picks a free one."""
    panes = load_panes(list(paths))
    return ViewerServer(ViewerApp.build(panes, view_command(paths)), host=host, port=port)


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "DeepZoom", "Layer", "Pane", "ViewerApp", "ViewerServer", "load_panes",
           "open_viewer", "view_command"]
