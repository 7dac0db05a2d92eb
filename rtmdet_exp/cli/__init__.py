"""Command-line tools, one argument style: ``python -m rtmdet_exp.<tool> key=value ... [config overrides]``.

``run.py`` (train), ``rtmdet_exp.info``, ``.predict``, ``.evaluate``, ``.export``, ``.report`` and
``.preview`` are thin entry modules over these; every tool prints its keys with ``--help`` and ends a
known user error with its message and exit code 2, never a traceback.
"""
