"""dqnlab's SLURM launcher for Hydra (``hydra/launcher=slurm``); Hydra loads launchers only from ``hydra_plugins``."""
