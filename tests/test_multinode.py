"""Multi-node torchrun, for real: two "nodes" on this machine, each its own runner
parent and torchrun agent, meeting over torchrun's c10d rendezvous.

Where root and iproute2 allow it, the nodes live in two network namespaces joined by
a veth pair, each with its own address and hostname, so the rendezvous and gloo
cross a real interface; otherwise (and additionally) over loopback.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from runner.launch.options import LaunchConfig
from runner.sweep.console import compact
from tests.conftest import FAST, PROBE_APP, REPO, entry_dirs, probe_records, read_json

NODE_ARGS = ["hydra.launcher.nproc_per_node=1", "hydra.launcher.nnodes=2"]


def loopback_port(count: int = 1) -> int:
    """A port P of 127.0.0.1 such that P .. P + count - 1 are free now (a sweep's point
    N uses the endpoint's port + N). The nodes bind them later: another process may
    take one meanwhile, which the ephemeral range makes unlikely, not impossible."""
    for _ in range(100):
        with contextlib.ExitStack() as held:
            first = held.enter_context(socket.socket())
            first.bind(("127.0.0.1", 0))
            base = first.getsockname()[1]
            try:
                for offset in range(1, count):
                    held.enter_context(socket.socket()).bind(("127.0.0.1", base + offset))
            except OSError:
                continue
            return base
    raise RuntimeError(f"no {count} consecutive free ports on 127.0.0.1")


def start_nodes(
    commands: list[list[str]], env: dict | None = None
) -> list[subprocess.CompletedProcess]:
    """Start every node's command at once; wait for all of them."""
    full_env = dict(os.environ, **(env or {}))
    procs = [
        subprocess.Popen(
            cmd,
            cwd=REPO,
            env=dict(full_env, PROBE_HOST=f"node{k}"),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for k, cmd in enumerate(commands)
    ]
    done = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def probe_sweep(
    node_rank: int,
    sweep_dir: Path,
    endpoint: str,
    *extra: str,
    nnodes: str = "2",
    backend: str = "c10d",
) -> list[str]:
    return [
        sys.executable,
        str(PROBE_APP),
        "-m",
        "value=1,2",
        "allreduce=true",
        "stamp=pinned",  # the same on both nodes (see test_nodes_that_disagree_...)
        "hydra.launcher.nproc_per_node=1",
        f"hydra.launcher.nnodes={nnodes}",
        f"hydra.launcher.node_rank={node_rank}",
        f"hydra.launcher.rdzv_backend={backend}",
        f"hydra.launcher.rdzv_endpoint={endpoint}",
        "hydra.launcher.rdzv_id=probe",
        "hydra.launcher.max_parallel=2",
        f"hydra.sweep.dir={sweep_dir}",
        *extra,
    ]


def check_two_node_sweep(tmp_path: Path, procs, port: int) -> None:
    for proc in procs:
        assert proc.returncode == 0, proc.stderr[-3000:]
    for num, value in enumerate([1.0, 2.0]):
        records = [r for k in range(2) for r in probe_records(tmp_path / f"node{k}" / str(num))]
        # Both points ran at once, each in its own 2-rank group across both nodes.
        assert sorted(r["rank"] for r in records) == [0, 1]
        assert {r["world_size"] for r in records} == {2}
        assert {r["allreduce"] for r in records} == {3.0}  # 1 + 2: both ranks took part
        assert {tuple(sorted(r["peer_hosts"])) for r in records} == {("node0", "node1")}
        assert len({r["config_hash"] for r in records}) == 1
        assert {r["config"]["value"] for r in records} == {value}
        launches = [read_json(tmp_path / f"node{k}" / str(num) / "launch.json") for k in range(2)]
        assert {rec["rdzv_id"] for rec in launches} == {f"probe-{num}"}
        assert {rec["rdzv_endpoint"].rsplit(":", 1)[1] for rec in launches} == {str(port + num)}
        # Rank 0 ran on exactly one node; that node's parent got the point's result.
        assert sorted(rec["rank0_here"] for rec in launches) == [False, True]
        rank0_node = next(k for k, rec in enumerate(launches) if rec["rank0_here"])
        for k, proc in enumerate(procs):
            output = (proc.stdout + proc.stderr).splitlines()
            done = next(line for line in output if f"#{num} done" in line)
            assert f"-> {compact(value if k == rank0_node else None)}  [" in done


@pytest.mark.slow
def test_sweep_across_two_network_namespaces(tmp_path, two_nodes, entry_base):
    """Two points at once, each a 2-node group; rendezvous and gloo cross the veth."""
    port = 29650
    commands = [
        two_nodes.command(k, probe_sweep(k, tmp_path / f"node{k}", f"rnode0:{port}"))
        for k in range(2)
    ]
    procs = start_nodes(commands)
    check_two_node_sweep(tmp_path, procs, port)
    records = probe_records(tmp_path / "node0" / "0") + probe_records(tmp_path / "node1" / "0")
    # Workers found their store on node 0's veth address, not on loopback.
    assert {r["master_addr"] for r in records} == {"rnode0"}
    assert not entry_dirs(entry_base)


@pytest.mark.slow
def test_sweep_across_two_nodes_on_loopback(tmp_path, entry_base):
    port = loopback_port(2)
    procs = start_nodes(
        [probe_sweep(k, tmp_path / f"node{k}", f"127.0.0.1:{port}") for k in range(2)]
    )
    check_two_node_sweep(tmp_path, procs, port)
    assert not entry_dirs(entry_base)


@pytest.mark.slow
def test_static_rendezvous_across_two_nodes_on_loopback(tmp_path, entry_base):
    """rdzv_backend=static: ranks from each node's node_rank, the store on the
    endpoint's host and port (PORT + N for point N), no elastic rendezvous."""
    port = loopback_port(2)
    procs = start_nodes(
        [
            probe_sweep(k, tmp_path / f"node{k}", f"127.0.0.1:{port}", backend="static")
            for k in range(2)
        ]
    )
    check_two_node_sweep(tmp_path, procs, port)
    assert not entry_dirs(entry_base)


@pytest.mark.slow
def test_elastic_min_max_nodes_grows_to_max_when_every_node_joins(tmp_path, entry_base):
    """nnodes=1:2 with both nodes there: the rendezvous closes as soon as MAX have
    joined (well inside the last call), so each point is one 2-node group."""
    port = loopback_port(2)
    procs = start_nodes(
        [
            probe_sweep(
                k,
                tmp_path / f"node{k}",
                f"127.0.0.1:{port}",
                "hydra.launcher.rdzv_conf='last_call_timeout=120'",
                nnodes="1:2",
            )
            for k in range(2)
        ]
    )
    check_two_node_sweep(tmp_path, procs, port)
    assert not entry_dirs(entry_base)


@pytest.mark.slow
def test_single_training_run_on_two_nodes(tmp_path):
    """``python -m runner`` with nnodes=2: the same command on each node but node_rank,
    the run dir pinned (a ``${now:}`` dir would differ between nodes; see the next test)."""
    port = loopback_port()
    run_dir = tmp_path / "run"
    commands = [
        [
            sys.executable,
            "-m",
            "runner",
            *FAST,
            "trainer.nproc_per_node=1",
            "hydra.launcher.nnodes=2",
            f"hydra.launcher.node_rank={k}",
            "hydra.launcher.rdzv_backend=c10d",
            f"hydra.launcher.rdzv_endpoint=127.0.0.1:{port}",
            f"hydra.run.dir={run_dir}",
        ]
        for k in range(2)
    ]
    procs = start_nodes(commands)
    for proc in procs:
        assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = read_json(run_dir / "metrics.json")
    assert metrics["world_size"] == 2
    assert sorted(p.name for p in run_dir.glob("*.log")) == ["runner.log", "runner_rank1.log"]
    assert "2 rank(s)" in (run_dir / "runner.log").read_text()


@pytest.mark.slow
def test_nodes_that_disagree_on_the_config_fail_naming_the_keys(tmp_path, entry_base):
    """The probe's ``stamp`` is ``${now:...}``: composed on two nodes at different
    moments it differs, and the job must say so instead of training on two configs."""
    port = loopback_port()
    commands = [
        [
            sys.executable,
            str(PROBE_APP),
            "-m",
            "value=1",
            *NODE_ARGS,
            f"hydra.launcher.node_rank={k}",
            "hydra.launcher.rdzv_backend=c10d",
            f"hydra.launcher.rdzv_endpoint=127.0.0.1:{port}",
            f"hydra.sweep.dir={tmp_path / f'node{k}'}",
        ]
        for k in range(2)
    ]
    procs = start_nodes(commands)
    # Both nodes fail (neither waits for a partner that stopped); one names the key.
    assert [p.returncode != 0 for p in procs] == [True, True]
    text = "".join(p.stdout + p.stderr for p in procs)
    assert "composed a different config" in text and "differing keys: stamp" in text
    assert not entry_dirs(entry_base)


@pytest.mark.slow
def test_elastic_min_max_nodes_starts_with_the_nodes_present(tmp_path):
    """nnodes=1:2: one node alone forms the group once the last call passes."""
    port = loopback_port()
    proc = start_nodes(
        [
            [
                sys.executable,
                str(PROBE_APP),
                "-m",
                "value=3",
                "stamp=x",
                "hydra.launcher.nproc_per_node=2",
                "hydra.launcher.nnodes=1:2",
                "hydra.launcher.rdzv_backend=c10d",
                f"hydra.launcher.rdzv_endpoint=127.0.0.1:{port}",
                "hydra.launcher.rdzv_conf='last_call_timeout=1'",
                f"hydra.sweep.dir={tmp_path}",
            ]
        ]
    )[0]
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = probe_records(tmp_path / "0")
    assert {r["world_size"] for r in records} == {2}
    assert read_json(tmp_path / "0" / "launch.json")["rank0_here"] is True


# ----------------------------------------------------------------- command and checks


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"nnodes": "2"}, "rdzv_endpoint"),
        ({"nnodes": "2", "rdzv_endpoint": "node001"}, "rdzv_endpoint"),
        ({"nnodes": "1:2", "rdzv_endpoint": "h:1"}, "nnodes"),
        ({"nnodes": "0:2", "rdzv_backend": "c10d", "rdzv_endpoint": "h:1"}, "nnodes"),
    ],
)
def test_bad_multinode_settings_name_key_and_fix(overrides, key):
    with pytest.raises(ValueError, match=rf"hydra\.launcher\.{key}=.*Fix: "):
        LaunchConfig(**overrides).check()


def test_every_point_gets_its_own_rendezvous_id_and_port():
    launch = LaunchConfig(
        nnodes="2", rdzv_backend="c10d", rdzv_endpoint="head:29400", rdzv_id="exp"
    )
    points = [launch.for_point(n) for n in range(3)]
    assert [p.rdzv_id for p in points] == ["exp-0", "exp-1", "exp-2"]
    assert [p.rdzv_endpoint for p in points] == ["head:29400", "head:29401", "head:29402"]
    command = points[1].agent_args("/x/entry.py", None, [])
    flags = dict(zip(command[::2], command[1::2], strict=False))
    assert flags["--rdzv_backend"] == "c10d"
    assert "--rdzv_endpoint" in command and "head:29401" in command
    assert "exp-1" in command
    single = LaunchConfig(nproc_per_node=2)
    assert single.for_point(5) is single  # single node: its own loopback port instead


# ----------------------------------------------------------------- Slurm's node side

NODE_MAIN = """
import pickle, sys
from runner.sweep.slurm_node import NodeTask
outcome = NodeTask()(pickle.loads(open(sys.argv[1], "rb").read()))
open(sys.argv[2], "wb").write(pickle.dumps(outcome))
"""


@pytest.mark.slow
@pytest.mark.parametrize("network", ["loopback", "netns"])
def test_slurm_node_side_meets_across_nodes(tmp_path, request, network):
    """What a 2-node Slurm job runs on each node (``runner.sweep.slurm_node.NodeTask``), under the
    environment Slurm gives each node's task: the head node publishes a free port in
    the job folder, both agents meet over c10d at the head node, rank 0's value comes
    back from the node where it ran. (The one-node test cluster cannot allocate two
    nodes; tests/test_slurm.py covers submission, failures and cancelling.)"""
    import cloudpickle

    from tests.apps.node_task import world

    if network == "netns":
        nodes = request.getfixturevalue("two_nodes")
        nodelist, wrap = "rnode[0-1]", nodes.command
    else:
        nodelist, wrap = "localhost,localhost", lambda k, argv: argv
    payload = {
        "config": {"tag": "same-everywhere"},
        "task": world,
        "launch": LaunchConfig(nproc_per_node=1),
        "job_dir": str(tmp_path / "job"),
        "sys_path": [str(REPO), *sys.path],
        "folder": str(tmp_path),
    }
    (tmp_path / "payload.pkl").write_bytes(cloudpickle.dumps(payload))
    commands = []
    for k in range(2):
        env = {
            "SUBMITIT_EXECUTOR": "slurm",
            "SLURM_JOB_ID": "4242",
            "SLURM_JOB_NUM_NODES": "2",
            "SLURM_NODEID": str(k),
            "SLURM_JOB_NODELIST": nodelist,
            "SLURM_NTASKS": "2",
            "SLURM_PROCID": str(k),
            "SLURM_LOCALID": "0",
        }
        argv = ["env", *(f"{key}={value}" for key, value in env.items())]
        argv += [sys.executable, "-c", NODE_MAIN, str(tmp_path / "payload.pkl")]
        commands.append(wrap(k, [*argv, str(tmp_path / f"outcome{k}.pkl")]))
    procs = start_nodes(commands)
    for proc in procs:
        assert proc.returncode == 0, proc.stderr[-3000:]
    outcomes = [cloudpickle.loads((tmp_path / f"outcome{k}.pkl").read_bytes()) for k in range(2)]
    assert all(o["ok"] for o in outcomes), outcomes
    assert sorted(o["rank0_here"] for o in outcomes) == [False, True]
    value = next(o["value"] for o in outcomes if o["rank0_here"])
    assert value["world_size"] == 2 and value["allreduce"] == 3.0
    assert value["tag"] == "same-everywhere"
    port = int((tmp_path / "4242_rdzv_port").read_text())
    assert {o["port"] for o in outcomes} == {port}
    head = "rnode0" if network == "netns" else "localhost"
    assert all(f"{head}:{port}" in o["command"] for o in outcomes)
    assert all("slurm-4242" in o["command"] for o in outcomes)
    if network == "netns":
        assert sorted(value["hosts"]) == ["rnode0", "rnode1"]


def test_slurm_job_asks_for_the_launchers_node_count():
    """Each node's agent sees a one-node launch; the allocation must still be nnodes."""
    from runner.sweep.slurm import sbatch_parameters

    settings = {"nnodes": 2, "time_min": 30, "cpus_per_task": None, "partition": "gpu"}
    params = sbatch_parameters(settings, LaunchConfig(nproc_per_node=4))
    assert params["nodes"] == 2 and params["ntasks_per_node"] == 1
    assert params["cpus_per_task"] == 4 and params["partition"] == "gpu"
    # SIGUSR2 before the time limit: a quarter of it, at most 90 s, or as set.
    assert params["signal_delay_s"] == 90
    assert sbatch_parameters({**settings, "time_min": 2}, LaunchConfig())["signal_delay_s"] == 30
    custom = sbatch_parameters({**settings, "signal_lead_s": 200}, LaunchConfig())
    assert custom["signal_delay_s"] == 200
