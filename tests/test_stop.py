"""runner.stop: a stop asked of a running job (on Slurm, the warning before its time
limit). Fast checks of the rank-side rules here; tests/test_faults.py stops a real
2-rank training run through its entry dir, and tests/test_slurm.py a Slurm job with
its warning signal, requeued and resumed."""

from __future__ import annotations

import os
import signal

import pytest

import runner
from runner import stop


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """stop.install as a rank calls it, undone afterwards (signals, the DataLoader
    worker target, the entry dir's variable)."""
    import torch.utils.data._utils.worker as worker

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR2, signal.SIGTERM)}
    monkeypatch.setattr(worker, "_worker_loop", worker._worker_loop)
    monkeypatch.delenv(stop.ENTRY_ENV, raising=False)
    stop.install(tmp_path)
    yield tmp_path
    for sig, handler in before.items():
        signal.signal(sig, handler)
    stop._state.update(file=None, signalled=False, listening=False, terminated=False)
    stop._state.pop("torch_worker_loop", None)


def test_no_stop_outside_a_job():
    assert runner.stop_requested() is False


def test_the_nodes_stop_file_asks_the_rank_to_stop(installed):
    assert not runner.stop_requested()
    stop.request_stop(installed)
    assert runner.stop_requested()


def test_the_warning_signal_asks_the_rank_to_stop_instead_of_ending_it(installed):
    assert not runner.stop_requested()
    os.kill(os.getpid(), signal.SIGUSR2)
    assert runner.stop_requested() and not stop.terminated()


def test_sigterm_asks_for_a_stop_only_once_the_task_listens(installed):
    """Before its first check a task keeps SIGTERM's default (it ends at once, even
    blocked in a collective); from then on SIGTERM is a stop request."""
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert not runner.stop_requested()
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    os.kill(os.getpid(), signal.SIGTERM)
    assert runner.stop_requested() and stop.terminated()
