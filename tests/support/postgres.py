"""A throwaway PostgreSQL server on loopback for the shared-study tests.

The server binaries come from the ``pgserver`` wheel (a dev dependency: ``pip install -e ".[dev]"``
brings PostgreSQL 16 with it), else from a system install on ``PATH`` (Debian's ``postgresql``
package). The cluster lives in a temporary folder, listens on ``127.0.0.1`` on a free port and
trusts local connections; fsync is off, since the data is thrown away.

PostgreSQL refuses to run as root, and CI runs as root: then the server runs as ``nobody``,
from a copy of the binaries that ``nobody`` can read (a pip install under ``/root`` is private).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SERVER_USER = "nobody"  # an unprivileged account every Linux has


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries could be found or started; the message says why."""


def find_bindir() -> Path:
    """Folder holding ``initdb``, ``pg_ctl`` and ``postgres``: pgserver's wheel, else ``PATH``."""
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
        if (bindir / "initdb").exists():
            return bindir
    initdb = shutil.which("initdb")
    if initdb is not None:
        return Path(os.path.realpath(initdb)).parent
    raise PostgresUnavailable(
        "no PostgreSQL server binaries: neither the pgserver package (a dev dependency, "
        "`pip install -e \".[dev]\"`) nor an `initdb` on PATH (Debian: apt-get install postgresql)"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Runner:
    """Runs the server's commands, as ``nobody`` when this process is root."""

    def __init__(self) -> None:
        self.account = pwd.getpwnam(SERVER_USER) if os.geteuid() == 0 else None

    def run(self, cmd: list[str], cwd: Path, **kwargs: Any) -> subprocess.CompletedProcess:
        """Run ``cmd`` in ``cwd``; a program that cannot be executed gives return code 126."""
        if self.account is not None:
            kwargs.update(user=self.account.pw_uid, group=self.account.pw_gid, extra_groups=[])
        try:
            return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, **kwargs)
        except PermissionError as err:
            return subprocess.CompletedProcess(cmd, 126, "", str(err))

    def give(self, path: Path) -> None:
        """Hand ``path`` (and all below it) to the server's account."""
        if self.account is None:
            return
        for root, dirs, files in os.walk(path):
            for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                os.chown(name, self.account.pw_uid, self.account.pw_gid, follow_symlinks=False)


def _usable_bindir(bindir: Path, runner: _Runner, scratch: Path) -> Path:
    """``bindir``, or a copy of it when the server's account cannot run it there.

    The copy keeps the layout postgres and its libraries expect: ``lib/`` and ``share/`` beside
    ``bin/``, and for the pgserver wheel the ``pgserver.libs`` folder its RPATH names
    (``$ORIGIN/../../../pgserver.libs``).
    """
    if runner.run([str(bindir / "postgres"), "--version"], scratch).returncode == 0:
        return bindir
    install = bindir.parent  # .../site-packages/pgserver/pginstall
    base = install.parent.parent  # .../site-packages
    copy = scratch / "site" / install.relative_to(base)
    for part in ("bin", "lib", "share"):
        if (install / part).exists():
            shutil.copytree(install / part, copy / part, symlinks=True)
    libs = base / "pgserver.libs"
    if libs.exists():
        shutil.copytree(libs, scratch / "site" / libs.name, symlinks=True)
    runner.give(scratch / "site")
    check = runner.run([str(copy / "bin" / "postgres"), "--version"], scratch)
    if check.returncode != 0:
        raise PostgresUnavailable(f"{bindir}/postgres cannot run as {SERVER_USER}: {check.stderr.strip()}")
    return copy / "bin"


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server, yield its SQLAlchemy URL (``postgresql://postgres@127.0.0.1:<port>/postgres``),
    stop it and delete its files afterwards."""
    bindir = find_bindir()
    runner = _Runner()
    scratch = Path(tempfile.mkdtemp(prefix="rtmdet-pg-"))
    scratch.chmod(0o755)
    data = scratch / "data"
    try:
        bindir = _usable_bindir(bindir, runner, scratch)
        data.mkdir()
        runner.give(data)
        init = runner.run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                           "--encoding=UTF8", "--no-sync"], scratch)
        if init.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {init.stderr.strip()}")
        port = _free_port()
        options = f"-h 127.0.0.1 -p {port} -k {data} -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        start = runner.run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(data / "server.log"), "-o", options,
                            "-w", "-t", "60", "start"], scratch, timeout=90)
        if start.returncode != 0:
            log = (data / "server.log").read_text() if (data / "server.log").exists() else ""
            raise PostgresUnavailable(f"pg_ctl start failed: {start.stderr.strip()} {log[-2000:]}")
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            runner.run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], scratch, timeout=60)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
