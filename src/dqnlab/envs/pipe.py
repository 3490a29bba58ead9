"""Send a vector step now and receive its results later: the env steps while the host does other work."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from gymnasium.vector import VectorEnv

StepResult = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]


def steps_natively(env: VectorEnv) -> bool:
    """Whether ``env`` has its own ``send``/``recv`` (ale-py's vector env), through every wrapper around it.

    Each layer's class is asked, not the instance: a wrapper that forwards unknown attributes to the env inside
    it would otherwise offer the inner ``send`` and skip its own ``step``.
    """
    layer: Any = env
    while layer is not None:
        if not all(callable(getattr(type(layer), name, None)) for name in ("send", "recv")):
            return False
        layer = getattr(layer, "env", None)
    return True


class EnvPipe:
    """Send a vector step now and receive its results later, so the env steps while the host does other work.

    ale-py's vector env has this natively (``send``/``recv``: its C++ threads step the games); any other vector
    env is stepped by one worker thread when ``background`` is on (no gain for Python envs under the GIL, but the
    same code path), and inside ``send`` otherwise.

    Args:
        env: The vector env; one step may be in flight at a time.
        background: Step a non-native env on a worker thread.

    """

    def __init__(self, env: VectorEnv, background: bool = False) -> None:
        self.env = env
        self.native = steps_natively(env)
        self.background = background
        self._pool: ThreadPoolExecutor | None = None
        self._future: Future[StepResult] | None = None
        self._result: StepResult | None = None
        self.background_steps = 0  # steps taken on the worker thread

    def send(self, actions: np.ndarray) -> None:
        """Start stepping all envs with ``actions``."""
        if self.native:
            self.env.send(actions)  # type: ignore[attr-defined]
        elif not self.background:
            self._result = self.env.step(actions)
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="dqnlab-env")
            self._future = self._pool.submit(self.env.step, actions)
            self.background_steps += 1

    def recv(self) -> StepResult:
        """Wait for the step sent last and return what ``env.step`` returns."""
        if self.native:
            return self.env.recv()  # type: ignore[attr-defined]
        if self._result is not None:
            result, self._result = self._result, None
            return result
        assert self._future is not None, "recv() without send()"
        future, self._future = self._future, None
        return future.result()

    def close(self) -> None:
        """Stop the worker thread, if any."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
