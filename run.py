"""Train and evaluate one configuration: `python run.py model=rtmdet_s assigner=hard`.

Multirun sweeps: `python run.py -m kernel=k3,k5,k7 seed=0,1,2` (see sweeps/ and README.md).
"""

import warnings

import hydra
from omegaconf import DictConfig

from rtmdet_exp.cli.train import run_main
from rtmdet_exp.experiment import register

register()
# conf/hydra/launcher/*.yaml extend the submitit plugin's schema of the same name on purpose
warnings.filterwarnings("ignore", message=r"(?s).*validated against ConfigStore schema with the same name")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    """Returns the final metrics; the Optuna sweeper reads its objective (val/mAP_best) from them."""
    return run_main(cfg)


if __name__ == "__main__":
    main()
