"""DQNModule: the online and target Q-networks and one TD update per ``training_step``."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any, NamedTuple

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from dqnlab.data.dataset import Batch, ReplayDataset
from dqnlab.data.replay import ReplayBuffer
from dqnlab.errors import ConfigError
from dqnlab.learn.fast.attributes import PlainAttributes
from dqnlab.learn.fast.cpu_compute import KEPT, Compute, kept, pick
from dqnlab.learn.fast.graphs import ClosureOnlyOptimizer, GraphedSampler, GraphedUpdate, graphs_available
from dqnlab.learn.fast.mlp_update import mlp_q_values, mlp_td_grads, plain_relu_layers
from dqnlab.learn.fast.optim_step import clip_and_guard, fast_step
from dqnlab.learn.networks import noisy_layers, resample_noise
from dqnlab.learn.passes import network_passes, next_passes
from dqnlab.learn.rl_math import TDLoss, categorical_td_loss, dqn_loss, expected_q, masked_argmax, td_target

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
# What a subclass may redefine to change the algorithm; the hand-written update steps aside when it does.
EXTENSION_POINTS = ("td_loss", "q_values", "forward")
_NO_STEP = 2**62  # "no non-finite gradient step yet" in DQNModule._nonfinite_first


def _as_is(batch: Batch) -> Batch:
    """The DataLoader's collate function: the replay buffer's batch as it is."""
    return batch


class NonFiniteSteps(NamedTuple):
    """Gradient steps skipped because their loss, Q-values or gradients were not finite (see ``pop_metrics``)."""

    count: int  # skipped gradient steps in the logging span
    first_gradient_step: int  # the first of them (0-based, Lightning's ``global_step`` when it ran)


class DQNModule(PlainAttributes, pl.LightningModule):
    """Deep Q-learning (Mnih et al. 2015) as a LightningModule.

    Optimization is manual so that one ``training_step`` is exactly one gradient step with no closure
    machinery, and so the update can later be captured whole (CUDA graphs). Metrics are summed on the
    device and read by the env-stepping callback every few thousand env steps, never per step.

    A gradient step whose loss, mean Q-value or gradients are not finite changes nothing: it is detected and
    skipped on the device (no host sync), counted, and reported at the next logged row (``pop_metrics``);
    :class:`dqnlab.run.nonfinite.NonFiniteGuard` then stops the run or warns.

    Args:
        network: The online Q-network; the target network is a frozen deep copy of it.
        optimizer: Partial optimizer (Hydra ``_partial_: true``), completed with the online parameters.
        batch_size: Transitions per gradient step.
        gamma: Discount factor per env step.
        loss: ``mse`` (as in the seed algorithm) or ``huber`` (Nature's TD-error clipping).
        max_grad_norm: Clip the global gradient norm to this; ``None`` or 0 disables.
        double: Double DQN target (online net picks the next action, target net rates it).
        lr_end_factor: Anneal the learning rate linearly over the run (gradient steps) to this fraction of
            its initial value; 1.0 keeps it constant.
        n_step: Length of the returns the replay buffer sums (env steps); passed to the buffer by
            :func:`dqnlab.train.build`, which also gives it ``gamma``.
        num_atoms: Atoms of a categorical return distribution (C51, Bellemare et al. 2017); 1 = expected
            Q-values. The network then outputs ``[B, A, num_atoms]`` logits and ``loss`` must be
            ``cross_entropy``.
        v_min: Smallest atom (return units) when ``num_atoms > 1``.
        v_max: Largest atom (return units) when ``num_atoms > 1``.
        cuda_graph: Record the whole update (and the replay draw) as CUDA graphs and replay them
            (:mod:`dqnlab.learn.fast.graphs`): ``auto`` on a GPU, ``true`` (a GPU is required), ``false`` eager. The
            optimizer is then built with ``capturable=True``. Same updates as eager; on a GPU host-bound by
            Python, several times faster.
        precision: ``fp32``, ``bf16`` (autocast) or ``auto``; with ``channels_last`` (``auto``, ``true``,
            ``false``): how a conv net computes on a CPU, chosen by :meth:`pick_compute`.
        augment: Applied to the drawn observations and next observations before the update (DrQ).

    Noisy networks (``network.noisy=true``) need no switch here: their noise is resampled before every update
    (online and target networks independently) and every acting step (:meth:`greedy_actions`).
    """

    # Plain attributes written several times per gradient step, past nn.Module's checks (learn/fast/attributes.py):
    # Lightning's hook dispatch saves and restores `_current_fx_name` around every hook (16 writes per step), and
    # training_step counts `_metric_count`.
    _PLAIN_ATTRIBUTES = frozenset({"_current_fx_name", "_metric_count"})

    def __init__(
        self,
        network: nn.Module,
        optimizer: OptimizerFactory,
        batch_size: int = 64,
        gamma: float = 0.99,
        loss: str = "mse",
        max_grad_norm: float | None = None,
        double: bool = False,
        lr_end_factor: float = 1.0,
        n_step: int = 1,
        num_atoms: int = 1,
        v_min: float = -10.0,
        v_max: float = 10.0,
        cuda_graph: bool | str = "auto",
        precision: str = "auto",
        channels_last: bool | str = "auto",
        augment: Callable[[Tensor], Tensor] | None = None,
        fast_update: bool | str = "auto",
    ) -> None:
        super().__init__()
        if cuda_graph not in (True, False, "auto"):
            raise ValueError(f"algo.cuda_graph={cuda_graph!r}: use auto, true or false")
        if loss not in ("mse", "huber", "cross_entropy"):
            raise ValueError(f"algo.loss={loss!r} is not known: use mse, huber or cross_entropy (C51)")
        if (num_atoms > 1) != (loss == "cross_entropy"):
            raise ValueError(
                f"algo.loss={loss} with algo.num_atoms={num_atoms}: a distributional learner (num_atoms > 1) "
                "takes loss=cross_entropy and only it does; use algo=c51 or algo=dqn"
            )
        if num_atoms > 1 and not v_min < v_max:
            raise ValueError(f"algo.v_min={v_min} must be below algo.v_max={v_max}")
        self.automatic_optimization = False
        self.q_net = network
        self.target_net = copy.deepcopy(network).requires_grad_(False)
        self.optimizer_factory = optimizer
        self.batch_size = int(batch_size)
        self.gamma = float(gamma)
        self.loss_kind = loss
        self.max_grad_norm = float(max_grad_norm) if max_grad_norm else 0.0
        self.double = bool(double)
        self.lr_end_factor = float(lr_end_factor)
        self.n_step = int(n_step)
        self.num_atoms = int(num_atoms)
        # Noisy layers, listed once: their noise is resampled before every update and acting step.
        self._noisy_online, self._noisy_target = noisy_layers(self.q_net), noisy_layers(self.target_net)
        self.noisy = bool(self._noisy_online)
        # The atoms z_i (return units); not persistent: they follow from the config.
        self.register_buffer("support", torch.linspace(v_min, v_max, max(self.num_atoms, 2)), persistent=False)
        self.buffer: ReplayBuffer | None = None
        self._update_priorities: Callable[[Tensor, Tensor], None] | None = None
        self._weights_are_ones = self.action_masked = False  # set by attach_buffer
        # Loss and Q(s, a) summed on the device and read rarely (see pop_metrics): no host sync per step.
        self.register_buffer("_metric_sums", torch.zeros(2), persistent=False)
        self._metric_count = 0
        # Skipped non-finite gradient steps of the logging span, and the global_step of the first of them.
        self.register_buffer("_nonfinite_count", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("_nonfinite_first", torch.full((), _NO_STEP, dtype=torch.long), persistent=False)
        self.register_buffer("_one", torch.ones(()), persistent=False)  # the "inverse scale" of the AMP check
        self.pending_nonfinite: NonFiniteSteps | None = None  # set by pop_metrics, taken by NonFiniteGuard
        # The 0-based index of the next gradient step, on the device: a recorded graph cannot read global_step.
        self.register_buffer("_step_t", torch.zeros((), dtype=torch.long), persistent=False)
        self.cuda_graph = cuda_graph
        self._online_params = list(self.q_net.parameters())
        # A plain ReLU MLP's loss gradients are written out by hand (learn/fast/mlp_update.py): same numbers,
        # fewer ops.
        # Only where it computes what td_loss computes: the stock loss, and no subclass redefining the TD loss or
        # the Q-values (EXTENSION_POINTS); algo.fast_update=false forces autograd.
        online, target = plain_relu_layers(self.q_net), plain_relu_layers(self.target_net)
        if fast_update not in (True, False, "auto"):
            raise ValueError(f"algo.fast_update={fast_update!r}: use auto or false")
        self.overridden = [n for n in EXTENSION_POINTS if getattr(type(self), n) is not getattr(DQNModule, n)]
        stock = loss in ("mse", "huber") and not self.overridden and fast_update is not False
        self._mlp = (online, target) if online and target and stock else None
        self._runner: GraphedUpdate | None = None  # runs (and on a GPU records) the update; configure_optimizers
        self.precision, self.channels_last = precision, channels_last
        self.compute = Compute(False, False, {})  # how a conv net's update runs on a CPU: pick_compute
        # How td_loss passes over s and s' (learn/passes.py): joined unless a conv net on a CPU (pick_compute);
        # once over s' while the target is the online net copied every update (TargetNetworkSync.attach).
        self._concat_double, self.target_is_online = True, False
        # Applied to the drawn minibatch's observations and next observations (learn/augment.py): DrQ.
        self.augment = augment

    def attach_buffer(self, buffer: ReplayBuffer) -> None:
        """Give the module the replay buffer its dataloader samples from (and, if it has priorities, update them)."""
        if buffer.n_step != self.n_step or (buffer.n_step > 1 and buffer.gamma != self.gamma):
            raise ValueError(
                f"the replay buffer sums {buffer.n_step}-step returns with gamma={buffer.gamma}, but the learner "
                f"has algo.n_step={self.n_step} and algo.gamma={self.gamma}: build the buffer with the learner's"
            )
        self.buffer = buffer
        self._update_priorities = getattr(buffer, "update_priorities", None)
        # The env gives action masks: the batches carry next_mask, which the TD targets maximise over (the header).
        self.action_masked = getattr(buffer, "masks", None) is not None
        # Uniform replay's loss weights are all ones: the hand-written update then skips multiplying by them.
        self._weights_are_ones = self._update_priorities is None

    def pick_compute(self, device: torch.device, obs_shape: tuple[int, ...], updates: int | None = None) -> Compute:
        """Choose how the networks compute (:func:`dqnlab.learn.fast.cpu_compute.pick`), measuring on a CPU a run
        of at least ``MIN_UPDATES_TO_MEASURE`` ``updates``, unless :meth:`keep_compute` kept a resumed run's.
        """
        self._concat_double = device.type != "cpu" or len(obs_shape) < 3
        if self.compute.unmeasured.startswith(KEPT):
            return self.compute
        passes = next_passes(double=self.double, target_is_online=self.target_is_online)  # after target's attach
        knobs = (self.precision, self.channels_last, updates, passes)
        compute = pick(self.q_net, device, obs_shape, self.batch_size, *knobs)
        if compute.measured_ms or compute.unmeasured or compute.bf16 or compute.channels_last:
            self._set_compute(compute)
        return self.compute

    def keep_compute(self, saved: Any) -> None:
        """A resumed run's own compute (its checkpoint's ``dqn_compute``): kept, not measured again."""
        if isinstance(saved, dict) and hasattr(self.q_net, "set_compute"):
            self._set_compute(kept(saved))

    def _set_compute(self, compute: Compute) -> None:
        self.compute = compute
        for net in (self.q_net, self.target_net):
            net.set_compute(compute.bf16, compute.channels_last)

    def q_values(self, out: Tensor) -> Tensor:
        """Q-values ``[B, A]`` of a network output: itself, or the expectation of C51's ``[B, A, atoms]`` logits."""
        return expected_q(out, self.support) if self.num_atoms > 1 else out

    def forward(self, obs: Tensor) -> Tensor:
        """Online Q-values ``[B, num_actions]`` (expected values for a distributional network)."""
        return self.q_values(self.q_net(obs))

    @torch.no_grad()
    def greedy_actions(self, obs: Tensor, mask: Tensor | None = None) -> Tensor:
        """Argmax actions of the online network for a batch of observations (one per env), among the valid
        actions of ``mask`` (``[B, A]`` bool, the env's action masks) when given.

        A noisy network draws new noise first: with noisy nets the noise is the exploration (Fortunato et al.
        2018), so each acting step gets its own.
        """
        if self.noisy:
            resample_noise(self._noisy_online)
        # The hand-written MLP: the same products without nn.Module dispatch (one acting step per vector step).
        q = mlp_q_values(self._mlp[0], obs) if self._mlp is not None else self.forward(obs)
        return q.argmax(dim=1) if mask is None else masked_argmax(q, mask)

    def td_loss(self, batch: Batch) -> TDLoss:
        """Loss of one minibatch, mean ``Q(s, a)`` and per-sample TD errors, without touching the optimizer.

        The bootstrap is discounted by ``batch.discounts`` (``gamma ** m`` for m-step returns) and the loss
        weighted by ``batch.weights`` (importance weights for prioritized replay).
        """
        out, next_target, next_q_online = network_passes(
            self.q_net, self.target_net, self.q_values, batch.obs, batch.next_obs,
            double=self.double, target_is_online=self.target_is_online, joined=self._concat_double,
        )  # fmt: skip
        b = batch
        if self.num_atoms > 1:
            args = (b.actions, b.rewards, b.terminated, b.discounts, b.weights, self.support, b.next_mask)
            return categorical_td_loss(out, next_target, next_q_online, *args)
        q_taken = out.gather(1, b.actions.unsqueeze(1)).squeeze(1)
        with torch.no_grad():
            target = td_target(b.rewards, b.terminated, next_target, b.discounts, next_q_online, b.next_mask)
        loss = dqn_loss(q_taken, target, self.loss_kind, b.weights)
        q_taken = q_taken.detach()
        return TDLoss(loss, q_taken.mean(), (q_taken - target).abs())

    def training_step(self, dataloader_iter: Iterator[Any]) -> None:
        """One TD update. The batch is drawn here, after the env-stepping callback has run for this step."""
        batch, _, _ = next(dataloader_iter)
        if self._runner is None:
            raise RuntimeError("DQNModule.configure_optimizers() must run before training_step")
        runner = self._runner
        # The whole update, optimizer step included, is the closure (see ClosureOnlyOptimizer): Lightning counts
        # the step and runs its hooks; the runner replays it as a CUDA graph once recorded.
        (errors,) = self.optimizers().step(closure=lambda: runner(batch))
        if self._update_priorities is not None:
            # device ops only: no host sync; a skipped step's NaN errors must not poison the priorities
            self._update_priorities(batch.indices, torch.nan_to_num(errors, nan=0.0, posinf=0.0, neginf=0.0))
        if self.lr_end_factor != 1.0:
            self.lr_schedulers().step()  # manual optimization: Lightning leaves scheduler stepping to us
        self._metric_count += 1

    def _update(
        self, batch: Batch, optimizer: torch.optim.Optimizer, step: Callable[[], None] | None = None
    ) -> tuple[Tensor]:
        """The update itself, eager or recorded: device ops only, no Python state that changes between steps.

        Args:
            batch: The minibatch.
            optimizer: The torch optimizer of the online network.
            step: Steps ``optimizer`` (:func:`~dqnlab.learn.fast.optim_step.fast_step`); default ``optimizer.step``.

        Returns:
            The ``[B]`` TD errors (new priorities for prioritized replay), as a 1-tuple.

        """
        if self.noisy:  # independent noise for the online and the target network, new at every update
            resample_noise(self._noisy_online)
            resample_noise(self._noisy_target)
        if self.augment is not None:  # independent draws for s and s', as Dopamine's DrQ(eps)
            batch = batch._replace(obs=self.augment(batch.obs), next_obs=self.augment(batch.next_obs))
        if self._mlp is not None:
            b = batch
            weights = None if self._weights_are_ones else b.weights
            loss, q_mean, errors, grads = mlp_td_grads(
                *self._mlp, b.obs, b.actions, b.rewards, b.next_obs, b.terminated, b.discounts, weights,
                self.loss_kind, self.double, b.next_mask,
            )  # fmt: skip
            for p, g in zip(self._online_params, grads, strict=True):
                p.grad = g
        else:
            loss, q_mean, errors = self.td_loss(batch)
            for p in self._online_params:  # zero_grad(set_to_none=True) without its profiler scope (~20 us)
                p.grad = None
            loss.backward()
        skip, loss_and_q = self._clip_and_skip_nonfinite(loss, q_mean, optimizer, step)
        (step or optimizer.step)()
        # The means are over finite steps (pop_metrics subtracts the skipped ones from the count). In-place
        # methods, not `+=`: that would also run nn.Module.__setattr__ (a few us per step each).
        self._metric_sums.add_(torch.where(skip, 0.0, loss_and_q))
        self._step_t.add_(1)
        return (errors,)

    def _clip_and_skip_nonfinite(
        self, loss: Tensor, q_mean: Tensor, optimizer: torch.optim.Optimizer, step: Callable[[], None] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Clip and guard this step (:func:`~dqnlab.learn.fast.optim_step.clip_and_guard`), counting a skip.

        Returns:
            A 0-dim bool tensor, whether the step is skipped (counted in ``_nonfinite_count``), and the
            ``[loss, mean Q]`` pair that was checked.

        """
        params = [p for p in self._online_params if p.grad is not None]
        skip, loss_and_q = clip_and_guard(params, loss, q_mean, optimizer, step, self.max_grad_norm, self._one)
        self._nonfinite_count.add_(skip)
        first = self._nonfinite_first
        torch.minimum(first, torch.where(skip, self._step_t, _NO_STEP), out=first)
        return skip, loss_and_q

    def pop_metrics(self) -> dict[str, float]:
        """Mean training metrics since the last call (one host sync), then reset the sums.

        Skipped non-finite steps are left out of the means, counted as ``train/nonfinite_steps`` and kept in
        :attr:`pending_nonfinite` for :class:`dqnlab.run.nonfinite.NonFiniteGuard`.
        """
        count = self._metric_count
        if count == 0:
            return {}
        loss_sum, q_sum = self._metric_sums.tolist()
        skipped, first = torch.stack([self._nonfinite_count, self._nonfinite_first]).tolist()  # stream drained
        self._metric_sums.zero_()
        self._nonfinite_count.zero_()
        self._nonfinite_first.fill_(_NO_STEP)
        self._metric_count = 0
        finite = count - skipped
        metrics = {"train/loss": loss_sum / finite, "train/q_mean": q_sum / finite} if finite else {}
        if skipped:
            metrics["train/nonfinite_steps"] = float(skipped)
            self.pending_nonfinite = NonFiniteSteps(int(skipped), int(first))
        return metrics

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the metric sums of the current logging span, so a resumed run logs the same rows."""
        checkpoint["dqn_metric_sums"] = (self._metric_sums.detach().cpu().clone(), self._metric_count)
        checkpoint["dqn_nonfinite"] = (self._nonfinite_count.cpu().clone(), self._nonfinite_first.cpu().clone())
        checkpoint["dqn_compute"] = {"bf16": self.compute.bf16, "channels_last": self.compute.channels_last}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the metric sums saved by :meth:`on_save_checkpoint`."""
        if "dqn_metric_sums" in checkpoint:
            sums, count = checkpoint["dqn_metric_sums"]
            self._metric_sums.copy_(sums)
            self._metric_count = int(count)
        if isinstance(checkpoint.get("dqn_nonfinite"), tuple):
            count, first = checkpoint["dqn_nonfinite"]
            self._nonfinite_count.copy_(count)
            self._nonfinite_first.copy_(first)
        self.keep_compute(checkpoint.get("dqn_compute"))  # resume computing as the run did

    def uses_cuda_graph(self) -> bool:
        """Whether this fit records the update as a CUDA graph (``cuda_graph`` and the module's device)."""
        available = graphs_available(self.device)
        if self.cuda_graph is True and not available:
            raise ConfigError(
                f"algo.cuda_graph=true needs the module on a CUDA GPU (it is on {self.device}): "
                "use trainer=gpu, or algo.cuda_graph=auto"
            )
        return bool(self.cuda_graph) and available

    def on_train_start(self) -> None:
        """Start the device-side step counter at Lightning's (a resumed run continues its count)."""
        self._step_t.fill_(self.global_step)

    def configure_optimizers(self) -> Any:
        """Optimizer over the online network only (the target network is never trained), and the optional
        linear learning-rate annealing over ``trainer.max_steps`` gradient steps.

        Lightning steps a :class:`~dqnlab.learn.fast.graphs.ClosureOnlyOptimizer` around the torch optimizer: its
        closure is the whole update (:meth:`_update`), eager on the CPU and replayed as a CUDA graph on a GPU, where the
        optimizer is built ``capturable=True`` (its step count stays on the GPU).
        """
        graphed = self.uses_cuda_graph()
        params = self.q_net.parameters()
        opt = self.optimizer_factory(params, capturable=True) if graphed else self.optimizer_factory(params)
        if graphed and self.lr_end_factor != 1.0:
            # A recorded step keeps a float lr forever; a tensor lr is read at every replay, and torch's
            # schedulers fill it in place.
            for group in opt.param_groups:
                group["lr"] = torch.tensor(float(group["lr"]), device=self.device)
        step = fast_step(opt)  # fused Adam or flat RMSprop without optimizer.step()'s Python (same numbers)
        if self._mlp is not None and self._mlp[0].stem is not None and self.device.type != "cpu":
            self._mlp = None  # the hand-written conv is measured on the CPU only; cuDNN is the GPU's
        # The first recorded update is checked against the eager one (learn/fast/graphs.py); noisy nets draw new noise
        # inside it, which a replay and an eager call draw differently, so only their recording is checked.
        state = None if self.noisy else partial(self._update_state, opt)
        self._runner = GraphedUpdate(partial(self._update, optimizer=opt, step=step), capture=graphed, state=state)
        wrapped = ClosureOnlyOptimizer(opt)
        if self.lr_end_factor == 1.0:
            return wrapped
        sched = torch.optim.lr_scheduler.LinearLR(
            wrapped, start_factor=1.0, end_factor=self.lr_end_factor, total_iters=max(self.trainer.max_steps, 1)
        )
        return {"optimizer": wrapped, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _update_state(self, optimizer: torch.optim.Optimizer) -> list[Tensor]:
        """Every tensor one update changes: parameters, optimizer state, metric sums and step counters."""
        opt_state = [t for st in optimizer.state.values() for t in st.values() if isinstance(t, Tensor)]
        counters = [self._metric_sums, self._step_t, self._nonfinite_count, self._nonfinite_first]
        return [*(p.data for p in self._online_params), *opt_state, *counters]

    @property
    def gradients(self) -> str:
        """How the update's gradients are computed: ``hand-written`` (learn/fast/mlp_update.py) or ``autograd``."""
        return "hand-written" if self._mlp is not None else "autograd"

    @property
    def update_path(self) -> str:
        """Which update ran: ``cuda_graph`` (recorded and checked) or ``eager`` (``summary.json``'s ``update_path``)."""
        return self._runner.path if self._runner is not None else "eager"

    def train_dataloader(self) -> DataLoader:
        """Minibatches sampled from the replay buffer, on its device, in this process."""
        if self.buffer is None:
            raise RuntimeError("DQNModule.attach_buffer(buffer) must be called before fitting")
        sampler = None
        recorded = self._runner is not None and self._runner.capture and self.buffer.device.type == "cuda"
        if recorded and not hasattr(self.buffer, "update_priorities"):
            # Uniform draws recorded as a CUDA graph too (prioritized replay draws eagerly, then is copied in).
            sampler = GraphedSampler(self.buffer, self.batch_size, capture=True)
        dataset = ReplayDataset(self.buffer, self.batch_size, sampler=sampler)
        # The batches are tensors on the buffer's device already: no conversion (default_convert rebuilds the tuple).
        return DataLoader(dataset, batch_size=None, num_workers=0, collate_fn=_as_is)
