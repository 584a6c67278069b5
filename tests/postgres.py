"""A PostgreSQL server for the shared-search tests and benchmark: Debian's package
(``apt-get install postgresql-15``), a private data dir, a free port. No pytest here:
``bench/search.py --part parents`` starts one too."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


class Unavailable(Exception):
    """This machine cannot start a PostgreSQL server; the message says why."""


@contextlib.contextmanager
def serving(address: str, inside: list[str] | None = None):
    """A PostgreSQL server from Debian's package: a private data dir, a free port,
    listening on ``address`` only; ``inside``: the command prefix that runs it in
    a network namespace (``ip netns exec NS``). Yields its URL without a database
    name; stopped and removed after."""
    initdbs = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not initdbs:
        raise Unavailable("no PostgreSQL server here (apt-get install postgresql-15)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise Unavailable("no PostgreSQL driver: pip install 'runner[search]'") from None
    bindir = initdbs[-1].parent
    data = Path(tempfile.mkdtemp(prefix="runner-pg-"))
    as_owner: list[str] = list(inside or [])
    if os.geteuid() == 0:  # initdb will not run as root: as Debian's postgres user
        if not shutil.which("runuser"):
            raise Unavailable("as root, PostgreSQL needs runuser to run as postgres")
        shutil.chown(data, "postgres")
        as_owner += ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    subprocess.run(
        [*as_owner, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    with open(data / "pg_hba.conf", "a") as hba:  # hosts on the server's own subnet too
        hba.write("host all all samenet trust\n")
    options = f"-p {port} -k {data} -c listen_addresses={address} -c fsync=off"
    pg_ctl = [*as_owner, str(bindir / "pg_ctl"), "-D", str(data)]
    subprocess.run(
        [*pg_ctl, "-l", str(data / "server.log"), "-w", "-o", options, "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@{address}:{port}"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)
