"""`histo view PATH... [--port N] [--host 127.0.0.1]`: a local web viewer of prediction, IHC and case folders."""

from __future__ import annotations

import argparse
import sys
from typing import Any

# histo.view.server's defaults, repeated so that registering the command imports nothing heavy
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8765


def register(sub: Any) -> None:
    """Add the `view` subcommand."""
    p = sub.add_parser("view", help="open a local deep-zoom viewer of results with every overlay",
                       description="Serve a local web viewer of a prediction folder, an IHC folder or a case folder "
                                   "(H&E and IHC side by side, synchronised): the slide's tiles with tissue, pattern, "
                                   "necrosis, mitoses, hotspot, IHC cell classes and registration layers. Only the "
                                   "given folders' results and slides are served.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="prediction, IHC or case folder (or a slide file)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT}; 0 = any free)")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to bind (default {DEFAULT_HOST}: this machine only; another address exposes the "
                        "slides to the network)")
    p.add_argument("--quiet", action="store_true", help="print only the URL")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    from histo.view import open_viewer

    server = open_viewer(args.paths, host=args.host, port=args.port)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"histo view: warning: listening on {args.host}: anyone who can reach it can see these slides",
              file=sys.stderr)
    if args.quiet:
        print(server.url, flush=True)
    else:
        print(f"histo view: {server.url}  ({len(server.app.panes)} slide(s); Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
