"""``run.py sweep``: the whole study for several models, locally or on SLURM, and one comparison table."""
