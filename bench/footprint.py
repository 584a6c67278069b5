"""Parent footprint: peak RSS of the sweep parent while 8 points run, the modules it
imported (torch must not be among them), and the wall time of ``python -m runner
--cfg job`` against ``python -c "import torch"``. Targets: parent RSS under 100 MB;
``--cfg job`` under a third of a torch import."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from _common import PY, REPO, markdown_table, median_of, publish

PROBE_APP = REPO / "tests" / "apps" / "probe_app.py"


def peak_rss_of_sweep(points: int, parallel: int) -> tuple[float, list[str]]:
    """Run a probe sweep; sample the parent's VmHWM until it exits. MB and modules."""
    out = Path(tempfile.mkdtemp(prefix="runner-bench-"))
    modules_file = out / "modules.json"
    env = dict(os.environ, PROBE_PARENT_MODULES=str(modules_file))
    proc = subprocess.Popen(
        [
            PY,
            str(PROBE_APP),
            "-m",
            f"value=range(0,{points})",
            "sleep=1",
            f"hydra.launcher.max_parallel={parallel}",
            f"hydra.sweep.dir={out / 'sweep'}",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    peak_kb = 0
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kb = max(peak_kb, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.05)
    if proc.returncode != 0:
        raise SystemExit(f"probe sweep failed ({proc.returncode})")
    return peak_kb / 1024, json.loads(modules_file.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    peak_mb, modules = peak_rss_of_sweep(points=8, parallel=4)
    torch_modules = [m for m in modules if m == "torch" or m.startswith("torch.")]
    cfg_job, _ = median_of([PY, "-m", "runner", "--cfg", "job"], args.runs)
    torch_import, _ = median_of([PY, "-c", "import torch"], args.runs)
    rows = [
        [
            "sweep parent peak RSS, 8 points x 2 ranks, 4 at a time",
            f"{peak_mb:.1f} MB",
            "target < 100 MB",
        ],
        [
            "torch modules imported by the sweep parent",
            str(len(torch_modules)),
            f"{len(modules)} modules in all",
        ],
        [
            "`python -m runner --cfg job`",
            f"{cfg_job:.3f} s",
            f"ratio to torch import {cfg_job / torch_import:.2f} (target < 0.33)",
        ],
        ['`python -c "import torch"`', f"{torch_import:.3f} s", "reference"],
    ]
    body = markdown_table(["measure", "value", "note"], rows)
    body += f"\n\nMedians of {args.runs} runs for the two commands."
    publish("Parent footprint", body, f"python bench/footprint.py --runs {args.runs}")


if __name__ == "__main__":
    main()
