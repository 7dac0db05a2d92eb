"""rtmdet-exp's Hydra plugins: the sweeper ``hydra/sweeper=optuna`` (Optuna >= 5: pruning, resume,
studies shared by several workers) and the requeueing submitit launchers.

Hydra finds them by scanning the ``hydra_plugins`` namespace package (no ``__init__.py`` there).
``config.py`` registers the sweeper's schema; ``optuna_sweeper.py`` holds the sweeper, with its
search space (``search_space.py``), its database, lock and retry rule (``storage.py``), its
heartbeat (``heartbeat.py``), what a trial ends with (``outcome.py``) and its trials-in-flight loop for
launchers that take one job at a time (``rolling.py``, ``hydra/launcher=gpu_pool``);
``submitit_launchers.py`` holds the launchers of ``conf/hydra/launcher/submitit_{slurm,local}.yaml``.
The job-side bridge (``report``, ``current_trial``) is ``rtmdet_exp.experiment.trial``.
"""
