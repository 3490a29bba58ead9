"""Worked examples of extending dqnlab (docs/extending.md): an env, a Q-network and a TD loss of your own.

dqnlab imports them by module name, so run from the repository root with this folder on ``PYTHONPATH``::

    PYTHONPATH=examples python train.py env=gym env.id=my_env:Catch-v0
    PYTHONPATH=examples python train.py -cd examples/conf env=gym env.id=my_env:Catch-v0 algo=munchausen

(``-cd examples/conf`` adds ``examples/conf/network/*.yaml`` and ``examples/conf/algo/*.yaml`` as options of their
groups). From the repository root they also import as ``examples.my_env`` and so on, as the tests do.
"""
