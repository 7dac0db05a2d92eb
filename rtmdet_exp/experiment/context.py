"""What Hydra knows about the launch of a run: its folder, command-line overrides, multirun and sweeper.

Outside a Hydra app (tests and scripts that call :func:`rtmdet_exp.experiment.train.train` with a
composed config) every field has a plain default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtmdet_exp.experiment import rundir


@dataclass
class LaunchContext:
    run_dir: Path | None = None  # Hydra's output folder of this run/job
    overrides: list[str] = field(default_factory=list)  # the command-line task overrides
    multirun: bool = False
    sweeper: Any = None  # hydra.sweeper node in a multirun
    sweep_dir: Path | None = None

    @classmethod
    def from_hydra(cls) -> LaunchContext:
        """The context of the running Hydra job, or an empty one."""
        try:
            from hydra.core.hydra_config import HydraConfig
            from hydra.types import RunMode

            hc = HydraConfig.get()
        except (ImportError, ValueError):
            return cls()
        multirun = hc.mode == RunMode.MULTIRUN
        return cls(
            run_dir=Path(hc.runtime.output_dir),
            overrides=[str(o) for o in hc.overrides.task],
            multirun=multirun,
            sweeper=hc.sweeper if multirun else None,
            sweep_dir=Path(hc.sweep.dir) if multirun else None,
        )

    @property
    def sweep_group(self) -> str | None:
        """The sweep's name for loggers: the last two parts of its folder (``<study>/<time>``)."""
        return "/".join(self.sweep_dir.parts[-2:]) if self.sweep_dir is not None else None

    @property
    def axes(self) -> list[str]:
        """Keys this job's sweep sets (its defining overrides other than the seed), for logger tags."""
        if not self.multirun:
            return []
        return [rundir.override_key(o) for o in rundir.defining_overrides(self.overrides, rundir.SETTING_FREE_KEYS)]
