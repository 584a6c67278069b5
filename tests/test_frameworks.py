"""Real training code under the launcher: tasks that start processes of their own,
Lightning's DDP, a task whose ranks never form a process group, and a foreign app
running N ranks without ``-m``."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import APPS, entry_dirs, read_json, run

pytestmark = pytest.mark.slow

WARM = "hydra.launcher.warm=true"


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_a_script_task_may_start_spawn_and_forkserver_children(tmp_path, entry_base, warm):
    """A DataLoader with "spawn" workers over a dataset class of the script, and
    "spawn" and "forkserver" children whose target the script defines: each child
    loads the script (as under ``python spawn_app.py``), finds what it unpickles, and
    does not start the task again."""
    sweep = tmp_path / "sweep"
    proc = run(
        [
            sys.executable,
            str(APPS / "spawn_app.py"),
            "-m",
            "value=1",
            f"hydra.sweep.dir={sweep}",
            *([WARM] if warm else []),
        ],
        cwd=tmp_path,
    )
    record = read_json(sweep / "0" / "launch.json")
    assert record["status"] == "COMPLETED" and record["warm"] == warm
    assert "-> 15" in proc.stdout + proc.stderr  # 0 + 1 + 4 + 9 from the workers, + 1
    assert entry_dirs(entry_base) == []
