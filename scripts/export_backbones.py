"""Write each scale's backbone of an exported model as a .safetensors file, to start a new training from it.

    python scripts/export_backbones.py histo/resources/models/default data/init
    # then, in a training config:  model.scales.cells.pretrained: data/init/cells_backbone.safetensors

Only the backbone is written (the heads start fresh): `model.scales.<name>.pretrained` loads backbones.
Prints one JSON line: the files written, their tensor counts and the source model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from histo.errors import HistoError
from histo.models import load_model, scale_nets


def main(argv: list[str] | None = None) -> int:
    """Export the backbones; exit 2 on a model that cannot be read."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="exported model folder or card")
    ap.add_argument("out", help="folder for <scale>_backbone.safetensors")
    args = ap.parse_args(argv)
    try:
        model, card = load_model(args.model)
    except HistoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, net in scale_nets(model, card.scales).items():
        state = {k: v.detach().cpu().contiguous() for k, v in net.backbone.state_dict().items()}
        path = out / f"{name}_backbone.safetensors"
        save_file(state, str(path), metadata={"histo_source_model": card.name, "histo_scale": name,
                                               "backbone": card.scales[name].backbone})
        written[name] = {"path": str(path), "tensors": len(state)}
    print(json.dumps({"model": card.name, "backbones": written}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
