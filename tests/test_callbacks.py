"""A user's own Hydra callbacks see their own job, as under Hydra's basic launcher:
one that saves a file into ``HydraConfig.get().runtime.output_dir`` in on_job_start
and on_job_end writes into its own point's dir, whatever order points end in, cold
and warm."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import MARK_OWN_DIR, PROBE_APP, REPO, launch_status, read_json, run

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_callbacks_see_their_own_job_when_points_end_out_of_order(tmp_path, warm):
    """Point #0 sleeps, #1 does not: #1 ends first, then #0 ends after #1 was the
    last point started."""
    sweep_dir = tmp_path / "sweep"
    run(
        [
            sys.executable,
            str(PROBE_APP),
            "-m",
            "ranks=1",
            "sleep=3,0",
            MARK_OWN_DIR,
            f"hydra.sweep.dir={sweep_dir}",
            "hydra.launcher.max_parallel=2",
            f"hydra.launcher.warm={str(warm).lower()}",
        ],
        env={"PYTHONPATH": str(REPO)},  # the callback's module, tests.apps.callbacks
        timeout=300,
    )
    ends = []
    for n in (0, 1):
        job_dir = sweep_dir / str(n)
        assert launch_status(job_dir) == "COMPLETED"
        for when in ("on_job_start", "on_job_end"):
            assert read_json(job_dir / f"{when}.json") == {"num_seen": n, "num_told": n}, when
        ends.append((job_dir / "on_job_end.json").stat().st_mtime)
    assert ends[1] < ends[0]  # the points did end out of start order
