"""The experiment layer: what a run is, where it lives, and how a config becomes its objects.

* :mod:`.schema` — the typed config (the only defaults), registered in Hydra's ConfigStore;
* :mod:`.resolvers` — run and sweep folders, per-variant recipe values;
* :mod:`.checks` and :mod:`.recipe` — refusing impossible configs, and the recipe card;
* :mod:`.build` — config -> objects (every group a ``_target_``);
* :mod:`.rundir` and :mod:`.session` — the run folder: file names, resume, results;
* :mod:`.train` — ``train(cfg)``, the entry point of ``run.py``.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# Options of earlier versions, named in the error when they are used.
RENAMED = {
    "trainer": "(trainer is no longer a group: the paper's recipe is experiment=paper)",
    "optim.name": "(the optimiser is the group choice: optim=adamw | optim=sgd)",
}


def register() -> None:
    """Register the schema and the resolvers (idempotent; call before composing)."""
    from rtmdet_exp.experiment.resolvers import register_resolvers
    from rtmdet_exp.experiment.schema import register_schema

    register_schema()
    register_resolvers()


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The project's config with command-line style overrides (no run folder, no training)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from rtmdet_exp.experiment.errors import ConfigError

    register()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException, ValueError) as err:  # the message names the key
        hints = [RENAMED[o.split("=", 1)[0]] for o in overrides if o.split("=", 1)[0] in RENAMED]
        raise ConfigError(" ".join([composition_message(err), *hints])) from err


def composition_message(err: BaseException) -> str:
    """Hydra's composition error with its causes (which hold the valid options and the full key)."""
    parts: list[str] = []
    while err is not None:
        text = " ".join(str(err).split())
        if text and text not in parts:
            parts.append(text)
        err = err.__cause__
    return ": ".join(parts)
