"""The gates in front of torch's private names (runner.launch.gates): every one open
on the torch the set-up installs (tests/test_prompt.py), and every one closed, the
path users of another torch release get: a real sweep of 2-rank points, cold and
warm, with ``RUNNER_TORCH_GATES=off``, says so once and gives the same results."""

from __future__ import annotations

import signal
import sys

import pytest

from runner import stop
from runner.launch import gates
from tests.conftest import PROBE_APP, launch_status, probe_records, run

OFF = {gates.GATES_ENV: "off"}


def test_an_untested_release_or_the_switch_closes_every_gate(monkeypatch):
    assert gates.release_problem("2.13.0+cpu") is None
    assert gates.release_problem("2.99.1") == "torch 2.99.1 (tested on 2.13)"
    monkeypatch.setenv(gates.GATES_ENV, "off")
    assert gates.problems() == dict.fromkeys(gates.problems(), "RUNNER_TORCH_GATES=off")
    note = gates.release_note()
    assert note is not None and "fast paths are off (RUNNER_TORCH_GATES=off)" in note


def test_a_closed_dataloader_gate_leaves_torchs_workers_as_they_are(tmp_path, monkeypatch):
    import torch.utils.data._utils.worker as worker

    monkeypatch.setenv(gates.GATES_ENV, "off")
    monkeypatch.setattr(worker, "_worker_loop", worker._worker_loop)
    torchs = worker._worker_loop
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR2, signal.SIGTERM)}
    try:
        stop.install(tmp_path)
        assert worker._worker_loop is torchs
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        stop._state.update(file=None, signalled=False, listening=False, terminated=False)
        stop._state.pop("torch_worker_loop", None)


@pytest.mark.slow
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_a_sweep_with_every_gate_closed_runs_as_with_them_open(tmp_path, warm):
    sweep_dir = tmp_path / "sweep"
    proc = run(
        [
            sys.executable,
            str(PROBE_APP),
            "-m",
            "value=1,2",
            "allreduce=true",
            f"hydra.sweep.dir={sweep_dir}",
            f"hydra.launcher.warm={str(warm).lower()}",
        ],
        env=OFF,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert out.count("runner's torch fast paths are off (RUNNER_TORCH_GATES=off)") == 1, out
    assert "prompt agent off" not in out  # said once, by the parent
    for n, value in enumerate((1, 2)):
        job_dir = sweep_dir / str(n)
        assert launch_status(job_dir) == "COMPLETED"
        records = probe_records(job_dir)
        assert [r["allreduce"] for r in records] == [3.0, 3.0]
        assert all(r["config"]["value"] == value for r in records)
        if not warm:  # a cold agent says it in its log; the warm process once, before
            agent_log = (job_dir / "torchrun.log").read_text()
            assert "prompt agent off (RUNNER_TORCH_GATES=off)" in agent_log
