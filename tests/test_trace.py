"""runner.trace: a rank's start stages, written only where a trace is asked for."""

from __future__ import annotations

import json
import os

from runner.trace import TRACE_ENV, mark


def test_marks_go_to_the_agents_dir_by_rank_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.delenv(TRACE_ENV, raising=False)
    mark("task")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv(TRACE_ENV, str(tmp_path))
    monkeypatch.setenv("RANK", "1")
    mark("worker")
    mark("task")
    lines = (tmp_path / str(os.getppid()) / "rank1.jsonl").read_text().splitlines()
    assert [json.loads(line)["stage"] for line in lines] == ["worker", "task"]
    assert json.loads(lines[0])["t"] <= json.loads(lines[1])["t"]
