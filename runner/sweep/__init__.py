"""Many jobs: the sweep scheduler over :class:`~runner.launch.job.Job`\\ s, the device
pool, Slurm jobs and the sweep's summary/report. It knows no trainer. Import the
modules themselves: this package imports nothing (the launcher plugin imports
``options`` at plugin discovery, which must stay light)."""
