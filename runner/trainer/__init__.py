"""runner's built-in app, what ``python -m runner`` runs: ``task`` (the Hydra task
function: check the config, train here or hand the job to the launch core),
``config`` (the typed schemas), ``train`` (the loop), ``data`` and ``models``. The
sweep layer knows nothing of it. Import the modules themselves: this package imports
nothing (``task`` and ``config`` stay free of torch; ``train``, ``data`` and
``models`` import it)."""
