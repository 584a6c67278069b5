"""runner as people install it: the sdist and wheel built (``python -m build``) and
checked (``twine check``), the wheel installed into a fresh venv that holds torch and
nothing but the wheel's declared dependencies, and used from a dir that is not the
checkout: the default experiment, a 2-rank run, a sweep of 2-rank points, ``--help``,
the report, a rerun, a user's own config dir, a Hydra app that is not runner's, and an
import of every module the wheel ships.

The venv reuses this environment's torch (its files, and its dependencies', linked
into a dir the venv's ``.pth`` names), so the test costs seconds of install, not a
download of torch; everything else comes from the package index (or pip's cache)."""

from __future__ import annotations

import json
import os
import sys
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.conftest import REPO, launch_status, run

pytestmark = pytest.mark.slow


def torch_and_its_dependencies() -> list[metadata.Distribution]:
    """torch and what it requires, recursively, as installed here."""
    found: dict[str, metadata.Distribution] = {}
    todo = ["torch"]
    while todo:
        name = todo.pop()
        dist = metadata.distribution(name)
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in found:
            continue
        found[key] = dist
        for spec in dist.requires or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return list(found.values())


def link_torch_only(into: Path) -> None:
    """``into`` holds links to the top-level files of torch and its dependencies."""
    into.mkdir()
    for dist in torch_and_its_dependencies():
        site = Path(str(dist.locate_file("")))
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in tops:
            if top not in ("..", "bin") and (site / top).exists() and not (into / top).exists():
                (into / top).symlink_to(site / top)


@dataclass
class Installed:
    python: Path
    bin: Path
    wheel: Path
    elsewhere: Path

    def run(self, *args: str, timeout: float = 300, check: bool = True):
        env = {"PATH": f"{self.bin}:{os.environ['PATH']}", "PYTHONPATH": ""}
        return run([*args], cwd=self.elsewhere, env=env, timeout=timeout, check=check)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    base = tmp_path_factory.mktemp("package")
    dist = base / "dist"
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)], timeout=600)
    built = sorted(p.name for p in dist.iterdir())
    assert built == ["runner-0.1.0-py3-none-any.whl", "runner-0.1.0.tar.gz"], built
    checked = run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir())])
    assert checked.stdout.count("PASSED") == 2, checked.stdout
    link_torch_only(base / "torch-only")
    venv = base / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    Path(site.stdout.strip(), "torch-only.pth").write_text(str(base / "torch-only") + "\n")
    wheel = next(dist.glob("*.whl"))
    run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], timeout=600)
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    return Installed(python, venv / "bin", wheel, elsewhere)


def test_the_wheel_ships_the_configs_and_declares_what_it_imports(installed):
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = wheel.namelist()
        meta = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "runner/conf/config.yaml" in names and "runner/conf/model/mlp.yaml" in names
    assert not any(n.startswith("conf/") for n in names)
    assert "Requires-Dist: numpy" in meta and "Requires-Dist: PyYAML" in meta
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    with zipfile.ZipFile(installed.wheel) as wheel:
        assert "runner = runner.__main__:cli" in wheel.read(entry_points).decode()


IMPORT_ALL = """
import importlib, json, pathlib, sys
import runner, hydra_plugins.torchrun_launcher
root = pathlib.Path(runner.__file__).parent.parent
failed = {}
for path in sorted([*root.glob("runner/**/*.py"), *root.glob("hydra_plugins/*/*.py")]):
    name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as error:
        failed[name] = error.name
print(json.dumps(failed))
"""


def test_every_module_imports_or_needs_a_declared_extra(installed):
    """A module may need a package of an extra (optuna for the search); anything else
    it imports must be a dependency the wheel declares."""
    failed = json.loads(installed.run(str(installed.python), "-c", IMPORT_ALL).stdout)
    requires = metadata.PathDistribution(  # the wheel's own metadata, as installed
        next(Path(installed.python.parents[1]).glob("lib/python*/site-packages/runner-*"))
    ).requires
    extras = {Requirement(r).name.lower() for r in requires or [] if "extra ==" in r}
    assert {name.split(".")[0] for name in failed.values()} <= extras, failed
    assert "runner.sweep.scheduler" not in failed and "runner.launch.worker" not in failed


def test_the_installed_runner_trains_sweeps_reports_and_reruns_from_any_dir(installed):
    out = installed.elsewhere
    version = installed.run("runner", "--version").stdout
    assert version.startswith("runner 0.1.0 (hydra-core ") and "torch 2." in version
    helped = installed.run(str(installed.python), "-m", "runner", "--help").stdout
    assert "model: mlp, resmlp" in helped
    small = ["trainer.epochs=1", "data.n_samples=400", "trainer.progress=lines"]
    installed.run(str(installed.python), "-m", "runner", *small, f"hydra.run.dir={out}/one")
    assert (out / "one" / "metrics.json").is_file()
    installed.run("runner", *small, "trainer.nproc_per_node=2", f"hydra.run.dir={out}/two")
    assert (out / "two" / "checkpoint.pt").is_file()
    sweep_dir = out / "sweep"
    installed.run(
        "runner",
        "-m",
        *small,
        "trainer.nproc_per_node=2",
        "optim.lr=0.01,0.1",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert [launch_status(sweep_dir / n) for n in "01"] == ["COMPLETED", "COMPLETED"]
    report = installed.run(
        str(installed.python), "-m", "runner.report", str(sweep_dir), check=False
    )
    assert (sweep_dir / "summary.md").is_file()
    assert "pip install 'runner[plot]'" in report.stdout + report.stderr  # not a traceback
    installed.run(str(installed.python), "-m", "runner.rerun", str(sweep_dir / "1"))
    assert len(list((sweep_dir / "reruns").iterdir())) == 1
    # An extra it lacks is named with its install command, before anything starts.
    searched = installed.run(
        "runner", "-m", "hydra/sweeper=search", "optim.lr=interval(0.01,0.1)", check=False
    )
    assert searched.returncode != 0 and "Traceback" not in searched.stderr
    assert (
        "hydra/sweeper=search needs optuna, which is not installed. Fix: pip install "
        "'runner[search]'" in searched.stderr
    )


def test_a_users_own_config_dir_composes_on_top_of_the_shipped_one(installed):
    mine = installed.elsewhere / "my_conf" / "experiment"
    mine.mkdir(parents=True)
    (mine / "tiny.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: resmlp\ntrainer:\n  epochs: 1\n"
    )
    composed = installed.run(
        "runner", "--config-dir", "my_conf", "+experiment=tiny", "--cfg", "job"
    ).stdout
    assert "  epochs: 1\n" in composed and "_target_: runner.trainer.models.ResidualMLP" in composed
    searched = installed.run(
        "runner", "hydra.searchpath=[file://my_conf]", "+experiment=tiny", "--cfg", "job"
    ).stdout
    assert searched == composed


FOREIGN_APP = """
import os
import hydra

@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    import torch.distributed as dist
    dist.init_process_group("gloo")
    print("rank", dist.get_rank(), "of", dist.get_world_size(), "x", cfg.x, flush=True)
    dist.destroy_process_group()
    return cfg.x * 10

if __name__ == "__main__":
    main()
"""


def test_a_hydra_app_that_is_not_runners_uses_the_installed_launcher(installed):
    app = installed.elsewhere / "app"
    (app / "conf").mkdir(parents=True)
    (app / "app.py").write_text(FOREIGN_APP)
    (app / "conf" / "config.yaml").write_text(
        "defaults:\n  - override hydra/launcher: torchrun\n  - _self_\n"
        "x: 1\nhydra:\n  launcher:\n    nproc_per_node: 2\n"
    )
    sweep_dir = app / "sweep"
    installed.run(
        str(installed.python), str(app / "app.py"), "-m", "x=1,2", f"hydra.sweep.dir={sweep_dir}"
    )
    assert [launch_status(sweep_dir / n) for n in "01"] == ["COMPLETED", "COMPLETED"]
    (rank_1,) = (sweep_dir / "1").glob("torchrun/*/attempt_0/1/stdout.log")
    assert "rank 1 of 2 x 2" in rank_1.read_text()
