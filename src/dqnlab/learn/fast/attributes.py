"""Writes of plain attributes that skip ``nn.Module.__setattr__``'s checks (several writes per gradient step)."""

from __future__ import annotations

from typing import Any


class PlainAttributes:
    """A base to put before ``nn.Module`` (or ``LightningModule``): the names in :attr:`_PLAIN_ATTRIBUTES` are set
    with ``object.__setattr__``.

    ``nn.Module.__setattr__`` checks each write against the parameters, buffers and submodules (~3 us a write; a
    CartPole run writes ``DQNModule``'s plain attributes often enough for that to be ~0.7 s). A name that can never
    be a parameter, buffer or submodule needs none of it, and ``object.__setattr__`` does the same for a fraction.
    """

    _PLAIN_ATTRIBUTES: frozenset[str] = frozenset()

    def __setattr__(self, name: str, value: Any) -> None:
        """``object.__setattr__`` for :attr:`_PLAIN_ATTRIBUTES`, the next class's ``__setattr__`` for the rest."""
        if name in self._PLAIN_ATTRIBUTES:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)
