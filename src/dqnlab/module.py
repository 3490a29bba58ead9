"""DQNModule: the online and target Q-networks and one TD update per ``training_step``."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from dqnlab.replay import Batch, ReplayBuffer, ReplayDataset
from dqnlab.rl_math import dqn_loss, td_target

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


class DQNModule(pl.LightningModule):
    """Deep Q-learning (Mnih et al. 2015) as a LightningModule.

    Optimization is manual so that one ``training_step`` is exactly one gradient step with no closure
    machinery, and so the update can later be captured whole (CUDA graphs). Metrics are summed on the
    device and read by the env-stepping callback every few thousand env steps, never per step.

    Args:
        network: The online Q-network; the target network is a frozen deep copy of it.
        optimizer: Partial optimizer (Hydra ``_partial_: true``), completed with the online parameters.
        batch_size: Transitions per gradient step.
        gamma: Discount factor per env step.
        loss: ``mse`` (as in the seed algorithm) or ``huber`` (Nature's TD-error clipping).
        max_grad_norm: Clip the global gradient norm to this; ``None`` or 0 disables.
        double: Double DQN target (online net picks the next action, target net rates it).

    """

    def __init__(
        self,
        network: nn.Module,
        optimizer: OptimizerFactory,
        batch_size: int = 64,
        gamma: float = 0.99,
        loss: str = "mse",
        max_grad_norm: float | None = None,
        double: bool = False,
    ) -> None:
        super().__init__()
        if loss not in ("mse", "huber"):
            raise ValueError(f"algo.loss={loss!r} is not known: use mse or huber")
        self.automatic_optimization = False
        self.q_net = network
        self.target_net = copy.deepcopy(network).requires_grad_(False)
        self.optimizer_factory = optimizer
        self.batch_size = int(batch_size)
        self.gamma = float(gamma)
        self.loss_kind = loss
        self.max_grad_norm = float(max_grad_norm) if max_grad_norm else 0.0
        self.double = bool(double)
        self.buffer: ReplayBuffer | None = None
        # Loss and Q(s, a) summed on the device and read rarely (see pop_metrics): no host sync per step.
        self.register_buffer("_metric_sums", torch.zeros(2), persistent=False)
        self._metric_count = 0

    def attach_buffer(self, buffer: ReplayBuffer) -> None:
        """Give the module the replay buffer its dataloader samples from."""
        self.buffer = buffer

    def forward(self, obs: Tensor) -> Tensor:
        """Online Q-values ``[B, num_actions]``."""
        return self.q_net(obs)

    @torch.no_grad()
    def greedy_actions(self, obs: Tensor) -> Tensor:
        """Argmax actions of the online network for a batch of observations (one per env)."""
        return self.q_net(obs).argmax(dim=1)

    def td_loss(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Loss of one minibatch and the mean ``Q(s, a)`` (detached), without touching the optimizer."""
        n = batch.obs.shape[0]
        if self.double:
            # One forward pass of the online net over s and s' together; s' only picks actions.
            q_all = self.q_net(torch.cat([batch.obs, batch.next_obs]))
            q, next_q_online = q_all[:n], q_all[n:].detach()
        else:
            q, next_q_online = self.q_net(batch.obs), None
        q_taken = q.gather(1, batch.actions.unsqueeze(1)).squeeze(1)
        with torch.no_grad():
            next_q_target = self.target_net(batch.next_obs)
            target = td_target(batch.rewards, batch.terminated, next_q_target, self.gamma, next_q_online)
        loss = dqn_loss(q_taken, target, self.loss_kind, batch.weights)
        return loss, q_taken.detach().mean()

    def training_step(self, dataloader_iter: Iterator[Any]) -> None:
        """One TD update. The batch is drawn here, after the env-stepping callback has run for this step."""
        batch, _, _ = next(dataloader_iter)
        opt = self.optimizers()
        loss, q_mean = self.td_loss(batch)
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(self.q_net.parameters(), self.max_grad_norm)
        opt.step()
        self._metric_sums[0] += loss.detach()
        self._metric_sums[1] += q_mean
        self._metric_count += 1

    def pop_metrics(self) -> dict[str, float]:
        """Mean training metrics since the last call (one host sync), then reset the sums."""
        count = self._metric_count
        if count == 0:
            return {}
        loss_sum, q_sum = self._metric_sums.tolist()
        self._metric_sums.zero_()
        self._metric_count = 0
        return {"train/loss": loss_sum / count, "train/q_mean": q_sum / count}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the metric sums of the current logging span, so a resumed run logs the same rows."""
        checkpoint["dqn_metric_sums"] = (self._metric_sums.detach().cpu().clone(), self._metric_count)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the metric sums saved by :meth:`on_save_checkpoint`."""
        if "dqn_metric_sums" in checkpoint:
            sums, count = checkpoint["dqn_metric_sums"]
            self._metric_sums.copy_(sums)
            self._metric_count = int(count)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Optimizer over the online network only; the target network is never trained."""
        return self.optimizer_factory(self.q_net.parameters())

    def train_dataloader(self) -> DataLoader:
        """Minibatches sampled from the replay buffer, on its device, in this process."""
        if self.buffer is None:
            raise RuntimeError("DQNModule.attach_buffer(buffer) must be called before fitting")
        return DataLoader(ReplayDataset(self.buffer, self.batch_size), batch_size=None, num_workers=0)
