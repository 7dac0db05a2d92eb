"""rtmdet-exp's Hydra sweeper ``hydra/sweeper=optuna``: Optuna >= 5 with pruning and resume.

Hydra finds it by scanning the ``hydra_plugins`` namespace package (no ``__init__.py`` there);
``config.py`` registers the schema, ``optuna_sweeper.py`` holds the sweeper. The job-side
bridge (``report``, ``current_trial``) is ``rtmdet_exp.sweep``.
"""
