"""Model size and cost: ``python -m rtmdet_exp.info model=rtmdet_s [img_size=640] [table=true] [overrides]``.

Prints one JSON line with the composed model's parameter count, MACs and FLOPs at the input size;
``table=true`` adds a per-part breakdown (backbone, neck, head). FLOPs are counted by
torch.utils.flop_counter over convolutions and matrix products, one multiply-accumulate (MAC)
being 2 FLOPs; the RTMDet README's "FLOPs" column is MACs.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from omegaconf import DictConfig

from rtmdet_exp.cli.args import Option, as_bool, parse, run
from rtmdet_exp.experiment import compose
from rtmdet_exp.experiment.build import build_network
from rtmdet_exp.models.complexity import breakdown

OPTIONS = {
    "img_size": Option(640, "square input size the cost is counted at", int),
    "table": Option(False, "also print a per-part table", as_bool),
}


def model_info(cfg: DictConfig, img_size: int = 640) -> dict[str, Any]:
    """Parameter count, MACs and FLOPs of the config's network, total and per part."""
    parts = breakdown(build_network(cfg), img_size=img_size)
    total = parts.pop("total")
    return {
        "num_classes": int(cfg.model.num_classes),
        "img_size": img_size,
        "params": int(total["params"]),
        "params_M": round(total["params"] / 1e6, 4),
        "macs_G": round(total["macs"] / 1e9, 4),
        "flops_G": round(total["flops"] / 1e9, 4),
        "parts": {name: {"params": int(p["params"]), "macs_G": round(p["macs"] / 1e9, 4)} for name, p in parts.items()},
    }


def _print_table(info: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{info['model']} at {info['img_size']}x{info['img_size']}, {info['num_classes']} classes")
    for col in ("part", "params (M)", "share", "GMACs"):
        table.add_column(col, justify="right" if col != "part" else "left")
    for name, part in info["parts"].items():
        table.add_row(name, f"{part['params'] / 1e6:.3f}", f"{part['params'] / info['params']:.0%}",
                      f"{part.get('macs_G', float('nan')):.3f}")
    table.add_row("total", f"{info['params_M']:.3f}", "100%", f"{info['macs_G']:.3f}")
    Console(file=sys.stdout).print(table)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args, overrides = parse(sys.argv[1:] if argv is None else argv, "rtmdet_exp.info", __doc__.splitlines()[0],
                            OPTIONS, overrides=True)
    cfg = compose(overrides)
    info = {"model": next((o.split("=", 1)[1] for o in overrides if o.startswith("model=")), "default"),
            **model_info(cfg, args["img_size"])}
    print(json.dumps(info))
    if args["table"]:
        _print_table(info)
    return info


if __name__ == "__main__":
    run(main)
