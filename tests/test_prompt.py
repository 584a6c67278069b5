"""The fenced use of torch internals (the prompt agent of runner.launch.gates): active
on the torch the set-up installs, and off, saying why, on a torch it was not tested
on. What the prompt agent does is tested with real agents in tests/test_launcher.py
(``test_agents_see_ended_ranks_at_once_not_at_their_next_look``) and tests/test_dist.py
(the tee tailer)."""

from __future__ import annotations

import subprocess
import sys

from runner.launch import gates


def test_the_fast_path_is_active_on_the_installed_torch(prompt_agent):
    """Fails when a torch upgrade changes the internals the prompt agent uses (or the
    set-up installs a torch it was not tested on), instead of falling back in silence."""
    assert gates.problems() == {"prompt": None, "dataloader": None, "process_group": None}
    assert gates.prompt_active()
    import torch.distributed.elastic.multiprocessing.api as processes
    import torch.distributed.launcher.api as launcher

    assert launcher.LocalElasticAgent.__name__ == "PromptAgent"
    assert processes.TailLog.__name__ == "PromptTailLog"


def test_an_untested_torch_keeps_torchruns_own_agent_and_says_why():
    code = (
        "import torch\n"
        "torch.__version__ = '2.99.0'\n"
        "from runner.launch import gates\n"
        "reason = gates.install_prompt()\n"
        "import torch.distributed.launcher.api as launcher\n"
        "assert not gates.prompt_active(), 'installed'\n"
        "assert launcher.LocalElasticAgent.__name__ == 'LocalElasticAgent'\n"
        "print(reason)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "torch 2.99.0 (tested on 2.13)" in out.stdout
