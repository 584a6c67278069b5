"""A Hydra app (not runner's) whose task starts processes the way training code does:
a DataLoader with "spawn" workers over a dataset defined in this script, and plain
multiprocessing children with the "spawn" and "forkserver" start methods, whose
target is defined here too. Each child loads this script as ``__mp_main__``, as it
would under ``python spawn_app.py``."""

import multiprocessing
import os

import hydra
import torch
from torch.utils.data import DataLoader, Dataset


class Squares(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(float(i * i))


def report_pid(queue) -> None:
    queue.put(os.getpid())


def start_child(method: str) -> None:
    context = multiprocessing.get_context(method)
    queue = context.Queue()
    child = context.Process(target=report_pid, args=(queue,))
    child.start()
    pid = queue.get(timeout=120)
    child.join(timeout=120)
    assert child.exitcode == 0 and pid == child.pid, (method, child.exitcode)


@hydra.main(version_base="1.3", config_path="probe_conf", config_name="config")
def main(cfg) -> float:
    for method in ("spawn", "forkserver"):
        start_child(method)
    loader = DataLoader(Squares(), batch_size=2, num_workers=1, multiprocessing_context="spawn")
    return sum(batch.sum().item() for batch in loader) + cfg.value


if __name__ == "__main__":
    main()
