"""The suites of ``scripts/benchmark.py``, one module per topic, run through that script (never on their own):
``common`` holds what the suites share (config composition, tables, the machine line, the loop timing that
cartpole-cpu and minatar-cpu both use, RL Zoo's DQN hyperparameters and the SB3 model built from them) and imports
no suite; each suite module imports ``common`` only, and ``benchmark.py`` imports the suites into its table, so
nothing here imports in a circle. ``scripts/`` is on ``sys.path`` when ``python scripts/benchmark.py`` runs, which
makes this folder the package ``bench``.
"""
