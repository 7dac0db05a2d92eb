"""``python tests/support/paused_run.py <run.py args>``: run.py, held still at a chosen moment so a test can kill it there.

``RTMDET_PAUSE_AT`` names the moment: ``checkpoint`` (half-way through writing the next checkpoint
file, after its first half is on disk) or ``validation`` (after the first validation batch). The
process writes ``RTMDET_PAUSE_MARKER`` (a file path) when it is there, then sleeps; the test sends
SIGKILL. Without the variables it is plain run.py. Nothing here is imported by the package.
"""

from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _hold(what: str) -> None:
    Path(os.environ["RTMDET_PAUSE_MARKER"]).write_text(what)
    time.sleep(600)


def _install() -> None:
    moment = os.environ.get("RTMDET_PAUSE_AT")
    if moment == "checkpoint":
        from rtmdet_exp.engine import checkpoint

        real = checkpoint._write_all

        def half_then_hold(fd: int, data: memoryview) -> None:
            if len(data) > 1024:  # the payload, not the header
                real(fd, data[: len(data) // 2])
                os.fsync(fd)
                _hold("checkpoint")
            real(fd, data)

        checkpoint._write_all = half_then_hold
    elif moment == "validation":
        from rtmdet_exp.engine import validation

        real_update = validation.CocoEvaluator.update

        def update_then_hold(self, predictions, image_ids) -> None:  # noqa: ANN001
            real_update(self, predictions, image_ids)
            _hold("validation")

        validation.CocoEvaluator.update = update_then_hold


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    _install()
    sys.argv = [str(REPO / "run.py"), *sys.argv[1:]]
    runpy.run_path(str(REPO / "run.py"), run_name="__main__")
