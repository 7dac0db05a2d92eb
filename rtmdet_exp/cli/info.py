"""Model size and cost: `python -m rtmdet_exp.info model=rtmdet_s [overrides] [--img-size 640] [--table]`.

Prints one JSON line with the composed model's parameter count, MACs and FLOPs at the input
size; `--table` adds a per-part breakdown (backbone, neck, head). FLOPs are counted by
torch.utils.flop_counter over convolutions and matrix products, one multiply-accumulate (MAC)
being 2 FLOPs; the RTMDet README's "FLOPs" column is MACs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from rtmdet_exp.config import CONF_DIR, instantiate, register
from rtmdet_exp.models.complexity import breakdown


def compose_config(overrides: list[str]) -> DictConfig:
    """The project's config with command-line style overrides (no run folder, no training)."""
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def model_info(cfg: DictConfig, img_size: int = 640) -> dict[str, Any]:
    """Parameter count, MACs and FLOPs of the config's network, total and per part."""
    network = instantiate(cfg.model, "model")
    parts = breakdown(network, img_size=img_size)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rtmdet_exp.info", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=rtmdet_s model.num_classes=80")
    parser.add_argument("--img-size", type=int, default=640, help="square input size (default 640)")
    parser.add_argument("--table", action="store_true", help="also print a per-part breakdown")
    args = parser.parse_args(argv)
    cfg = compose_config(args.overrides)
    info = model_info(cfg, args.img_size)
    info = {"model": next((o.split("=", 1)[1] for o in args.overrides if o.startswith("model=")), "default"), **info}
    print(json.dumps(info))
    if args.table:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{info['model']} at {args.img_size}x{args.img_size}, {info['num_classes']} classes")
        for col in ("part", "params (M)", "share", "GMACs"):
            table.add_column(col, justify="right" if col != "part" else "left")
        for name, part in info["parts"].items():
            table.add_row(name, f"{part['params'] / 1e6:.3f}", f"{part['params'] / info['params']:.0%}",
                          f"{part.get('macs_G', float('nan')):.3f}")
        table.add_row("total", f"{info['params_M']:.3f}", "100%", f"{info['macs_G']:.3f}")
        Console(file=sys.stdout).print(table)


if __name__ == "__main__":
    main()
