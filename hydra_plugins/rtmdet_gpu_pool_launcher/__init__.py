"""``hydra/launcher=gpu_pool``: the jobs of a sweep as K worker processes sharing one machine's GPUs.

Small-data runs leave a large GPU mostly idle; this launcher runs K of them at once, each in a
fresh process (spawned with its own environment, so CUDA is never initialised before the GPU
is chosen) in its own run folder. ``config.py`` registers the options, ``resources.py`` decides K,
each run's GPU and its share of the CPU cores, ``launcher.py`` is the launcher and ``worker.py``
the entry point of one job's process. The Optuna sweeper keeps K trials in flight with it
(``hydra_plugins.rtmdet_optuna_sweeper.rolling``). docs/sweeps.md, "A full GPU", has the rules.
"""
