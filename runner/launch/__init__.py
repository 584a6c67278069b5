"""The launch core: run one job (a resolved config and a task) as one torchrun.

``options`` (LaunchConfig), ``entry`` (the config as data in a private entry dir),
``job`` (the Job interface, the local torchrun job, ``launch``), ``agent`` and
``worker`` (what torchrun's agent and every rank run), ``warm`` (the warm process that
forks agents), ``prompt`` (the fenced use of torch internals), ``procs`` (process
helpers). It knows nothing of sweeps or of runner's trainer, and the parent side
never imports torch. Import the modules themselves: this package imports nothing.
"""
