"""The bad-input matrix: wrong overrides and values, as a user types them, each with
the error text it must produce; nothing starts and nothing is written."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import run

CASES = [
    # unknown groups and options: Hydra lists what there is
    (["model=nope"], "Could not find 'model/nope'"),
    (["data=mnist"], "Available options in 'data'"),
    (["trainer=nope"], "Could not find 'trainer/nope'"),
    (["+experiment=nope"], "Could not find 'experiment/nope'"),
    # wrong types, at composition
    (["trainer.epochs=abc"], "Value 'abc' of type 'str' could not be converted to Integer"),
    (["trainer.batch_size=1.5"], "Value '1.5' of type 'float' could not be converted to Integer"),
    (["seed=x"], "Value 'x' of type 'str' could not be converted to Integer"),
    (["model.depth=2.5"], "Value '2.5' of type 'float' could not be converted to Integer"),
    (["optim.lr=fast"], "could not be converted to Float"),
    # unknown keys
    (["trainer.nope=1"], "Key 'nope' not in 'TrainerConf'"),
    (["model.widht=3"], "Key 'widht' not in 'MLPConf'"),
    (["+trainer.nope=1"], "trainer.nope is not a key of trainer (TrainerConf)"),
    (["+optim.momentun=0.9"], "optim.momentun is not a key of optim (AdamWConf)"),
    # missing mandatory values
    (
        ["~data"],
        "data='???' is invalid: is mandatory and has no value. Fix: data=blobs (one of blobs, "
        "regression, spirals)",
    ),
    # ranges, before training
    (["trainer.batch_size=0"], "trainer.batch_size=0 is invalid: must be >= 1"),
    (["trainer.batch_size=-8"], "trainer.batch_size=-8 is invalid"),
    (["optim.lr=-0.1"], "optim.lr=-0.1 is invalid: must be > 0"),
    (["optim.lr=0"], "optim.lr=0.0 is invalid: must be > 0"),
    (["trainer.epochs=0"], "trainer.epochs=0 is invalid"),
    (["trainer.grad_accum_steps=0"], "trainer.grad_accum_steps=0 is invalid"),
    (["trainer.grad_accum_steps=128"], "trainer.grad_accum_steps=128 is invalid: is more than"),
    (["trainer.batch_size=100000"], "is larger than the 1600 training samples"),
    (["trainer.batch_size=30", "trainer.nproc_per_node=4"], "must split evenly over 4 rank(s)"),
    (["trainer.nproc_per_node=0"], "trainer.nproc_per_node=0 is invalid"),
    (["trainer.objective_mode=up"], "trainer.objective_mode='up' is invalid"),
    (["trainer.progress=fancy"], "trainer.progress='fancy' is invalid"),
    (["trainer.device=tpu"], "trainer.device='tpu' is invalid"),
    (["trainer.checkpoint_every=-1"], "trainer.checkpoint_every=-1 is invalid"),
    (["data.val_fraction=1.5"], "data.val_fraction=1.5 is invalid"),
    # tracking: an unknown logger, a store that cannot be opened (before any point starts)
    (["logger=wandb"], "Could not find 'logger/wandb'"),
    (
        ["logger=mlflow", "logger.tracking_uri=sqlite:////dev/null/x/mlflow.db"],
        "logger.tracking_uri='sqlite:////dev/null/x/mlflow.db' is invalid: cannot be opened",
    ),
    (
        ["-m", "seed=1,2", "logger=mlflow", "logger.tracking_uri=http://127.0.0.1:9"],
        "logger.tracking_uri='http://127.0.0.1:9' is invalid: cannot be opened",
    ),
    # malformed override and sweep syntax: which override, and what is wrong with it
    (
        ["optim.lr=[0.1"],
        "override 'optim.lr=[0.1': optim.lr='[0.1' is invalid: cannot be parsed: it opens a "
        "bracket that is never closed (a ']' is missing). Fix: write optim.lr=VALUE",
    ),
    (
        ["-m", "optim.lr=0.1,,0.2"],
        "optim.lr='0.1,,0.2' is invalid: cannot be parsed: Hydra's override grammar cannot "
        "read it (extraneous input ','",
    ),
    (["-m", "optim.lr=interval(0.1)"], "missing a required argument: 'end'"),
    (
        ["-m", "optim.lr=choice(0.1"],
        "optim.lr='choice(0.1' is invalid: cannot be parsed: it opens a bracket that is "
        "never closed (a ')' is missing)",
    ),
    # launcher options
    (
        ["-m", "seed=1,2", "hydra.launcher.max_parallel=0"],
        "hydra.launcher.max_parallel=0 is invalid",
    ),
    (["-m", "seed=1,2", "hydra.launcher.timeout=-1"], "hydra.launcher.timeout=-1"),
    # devices, for sweeps and single runs alike
    (
        ["-m", "seed=1,2", "hydra.launcher.points_per_device=0"],
        "hydra.launcher.points_per_device=0 is invalid: must be an integer >= 1",
    ),
    (["hydra.launcher.points_per_device=0"], "hydra.launcher.points_per_device=0 is invalid"),
    (
        ["-m", "seed=1,2", "hydra.launcher.devices=0", "hydra.launcher.lease_dir=/dev/null/x"],
        "hydra.launcher.lease_dir='/dev/null/x' is invalid: the device leases live there",
    ),
    (
        ["hydra.launcher.devices=0", "hydra.launcher.lease_dir=/dev/null/x"],
        "Fix: hydra.launcher.lease_dir=A_DIR_EVERY_USER_CAN_WRITE",
    ),
    (
        ["hydra.launcher.devices='0,1'", "trainer.nproc_per_node=4"],
        "this run needs 4 devices, one per local rank, and hydra.launcher.devices has 2",
    ),
    (
        ["-m", "hydra.launcher.max_parallel=1,2"],
        "Sweeping over Hydra's configuration is not supported",
    ),
    # multi-node and Slurm
    (
        ["hydra.launcher.nnodes=2", "trainer.nproc_per_node=1"],
        "hydra.launcher.rdzv_endpoint='' is invalid: a 2-node job needs a rendezvous address",
    ),
    (
        ["hydra.launcher.nnodes=2", "hydra.launcher.rdzv_endpoint=node001"],
        "hydra.launcher.rdzv_endpoint='node001' is invalid: must be HOST:PORT",
    ),
    (["hydra/launcher=torchrun_slurm"], "hydra/launcher=torchrun_slurm submits multiruns only"),
    (
        ["-m", "hydra/launcher=torchrun_slurm", "hydra.launcher.time_min=0"],
        "hydra.launcher.time_min=0 is invalid",
    ),
    (
        ["-m", "hydra/launcher=torchrun_slurm", "hydra.launcher.max_requeues=-1"],
        "hydra.launcher.max_requeues=-1 is invalid: must be >= 0. Fix: "
        "hydra.launcher.max_requeues=3",
    ),
    (
        ["-m", "hydra/launcher=torchrun_slurm", "hydra.launcher.time_min=1"]
        + ["hydra.launcher.signal_lead_s=60"],
        "hydra.launcher.signal_lead_s=60 is invalid: the warning must come after the job "
        "starts and before its time limit (time_min=1: between 1 and 59 s). Fix: "
        "hydra.launcher.signal_lead_s=15, or signal_lead_s=null",
    ),
    (
        ["-m", "hydra/launcher=torchrun_slurm", "+hydra.launcher.nodes=2"],
        "unknown key(s) ['nodes'] for hydra/launcher=torchrun_slurm",
    ),
]


def test_matrix_is_big_enough():
    assert len(CASES) >= 20


@pytest.mark.slow
@pytest.mark.parametrize("overrides, message", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input(tmp_path, overrides, message):
    proc = run(
        [
            sys.executable,
            "-m",
            "runner",
            *overrides,
            f"hydra.run.dir={tmp_path / 'run'}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        check=False,
    )
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr  # the message alone
    assert not list(tmp_path.glob("**/metrics.json*"))
    assert not list(tmp_path.glob("**/checkpoint.pt"))
