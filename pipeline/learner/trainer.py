"""The training loop: in-memory uint8 data, batched augmentation, no host sync per step.

At batch 64 an epoch is ~850 tiny steps, so per-step overhead decides the speed: each epoch is
shuffled once, augmented a chunk of batches at a time, and per-step losses, hits and gradient
norms stay tensors until the chunk ends. Everything random draws from one seeded CPU generator
(plus torch's global generator for dropout), and `state_dict()` captures all of it, so a run
resumed after any completed epoch ends bit-for-bit where an uninterrupted run would on CPU.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline.config import TrainParams
from pipeline.errors import PipelineError
from pipeline.learner import distributed
from pipeline.learner.augment import Augmentation, augment
from pipeline.learner.distributed import World
from pipeline.learner.ema import WeightAverage
from pipeline.learner.losses import loss_fn
from pipeline.learner.model import MLP
from pipeline.learner.scoring import score
from pipeline.progress import bar

# Images augmented per grid_sample call: small enough to stay in cache (2048 measured fastest);
# fixed, because it orders the random draws.
CHUNK_IMAGES = 2048
EVAL_BATCH = 4096


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 [N, S, S]
    labels: torch.Tensor  # int64 [N]


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    train_acc: float
    valid_loss: float
    valid_acc: float
    seconds: float
    lr: float
    grad_norms: dict[str, float] = field(default_factory=dict)

    def history_row(self) -> dict[str, float]:
        return {
            "epoch": self.epoch,
            "train_loss": self.train_loss,
            "train_acc": self.train_acc,
            "valid_loss": self.valid_loss,
            "valid_acc": self.valid_acc,
            "seconds": self.seconds,
            "lr": self.lr,
        }


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError(
            "train.device is cuda but torch sees no CUDA device; use -S train.device=auto or cpu"
        )
    return torch.device(name)


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on the device when `amp`, else nothing: for training steps only."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def linear_layers(model: MLP) -> dict[str, nn.Linear]:
    """Name -> layer, e.g. hidden.0, hidden.2, output: the columns of grad_norms.csv."""
    return {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}


def make_optimizer(model: nn.Module, train: TrainParams) -> torch.optim.Optimizer:
    """Fused kernels (CPU and CUDA): one call per step instead of several per parameter tensor,
    ~20% of the step time at batch 64; same algorithm and defaults as the reference's Adam."""
    if train.optimizer == "adam":
        if train.momentum:
            raise PipelineError(
                "train.momentum applies to sgd only; set it to 0 or use -S train.optimizer=sgd"
            )
        return torch.optim.Adam(
            model.parameters(), lr=train.lr, weight_decay=train.weight_decay, fused=True
        )
    return torch.optim.SGD(
        model.parameters(),
        lr=train.lr,
        momentum=train.momentum,
        weight_decay=train.weight_decay,
        fused=True,
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, train: TrainParams, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Stepped once per batch; `none` keeps train.lr throughout. OneCycle moves the lr only: its
    default momentum cycle would overwrite train.momentum (SGD) and Adam's beta1."""
    total = steps_per_epoch * train.epochs
    if train.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if train.lr_schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=train.lr, total_steps=total, cycle_momentum=False
        )
    return None


def diverged(epoch: int, step: int, steps: int, lr: float) -> PipelineError:
    return PipelineError(
        f"training diverged: non-finite loss at epoch {epoch}, step {step} of {steps}; "
        f"lower train.lr (now {lr:g}), e.g. -S train.lr={lr / 10:g}"
    )


class Trainer:
    """Model, optimiser, schedule and random state of one training run."""

    def __init__(
        self,
        model: MLP,
        train: TrainParams,
        aug: Augmentation,
        steps_per_epoch: int,
        world: World = World(),
    ) -> None:
        self.model = model
        self.world = world
        self.train = train
        self.aug = aug
        self.device = next(model.parameters()).device
        self.net = distributed.wrap(
            model, world
        )  # forward through this; `model` stays the plain module
        self.loss = loss_fn(train.loss)  # validation: the plain loss, comparable across runs
        self.objective = loss_fn(train.loss, train.label_smoothing)  # what the steps minimise
        self.optimizer = make_optimizer(model, train)
        self.steps_per_epoch = steps_per_epoch
        self.scheduler = make_scheduler(self.optimizer, train, steps_per_epoch)
        self.generator = torch.Generator().manual_seed(train.seed)
        self.layers = linear_layers(model)
        self.weights = [layer.weight for layer in self.layers.values()]
        self.ema = WeightAverage(model, train.ema_decay) if train.ema_decay else None

    @property
    def evaluated(self) -> MLP:
        """The weights validation scores and the best epoch keeps: the EMA's when it is on."""
        return self.ema.model if self.ema else self.model

    def state_dict(self) -> dict:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else {},
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),  # dropout masks
        }
        if self.ema:
            state["ema"] = self.ema.model.state_dict()
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler:
            self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        if self.ema:
            self.ema.model.load_state_dict(state["ema"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def train_epoch(self, data: Split, epoch: int) -> tuple[float, float, dict[str, float]]:
        """One pass in a fresh random order: (mean loss, accuracy, mean weight-gradient L2 norm per
        layer).

        With several ranks each trains on its rows of every global batch
        (pipeline/learner/distributed.py) and weights its loss by its share, so DDP's gradient
        average is the whole batch's gradient.
        """
        self.model.train()
        world = self.world
        if world.size > 1:
            torch.manual_seed(distributed.dropout_seed(self.train.seed, epoch, world.rank))
        n, batch = len(data.labels), self.train.batch_size
        steps = -(-n // batch)
        chunk = batch * max(1, CHUNK_IMAGES // batch)
        order = torch.randperm(n, generator=self.generator).to(self.device)
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        hits = torch.zeros((), device=self.device, dtype=torch.int64)
        norm_sum = torch.zeros(len(self.layers), device=self.device, dtype=torch.float64)
        step = 0
        with bar(total=steps, desc=f"epoch {epoch}", unit="batch", leave=False) as progress:
            for start in range(0, n, chunk):
                index = order[start : start + chunk]
                rows = distributed.rows(len(index), batch, world) if world.size > 1 else None
                pixels = augment(data.images[index], self.aug, self.generator, rows).flatten(1)
                labels = (
                    data.labels[index] if rows is None else data.labels[index[rows.to(self.device)]]
                )
                losses, sizes, predictions = [], [], []
                whole = [min(batch, len(index) - first) for first in range(0, len(index), batch)]
                offset = 0
                for size, batch_size in zip(
                    distributed.local_sizes(len(index), batch, world), whole, strict=True
                ):
                    x, y = pixels[offset : offset + size], labels[offset : offset + size]
                    offset += size
                    loss, predicted = self._step(x, y, size * world.size / batch_size, norm_sum)
                    losses.append(loss)
                    sizes.append(len(y))
                    predictions.append(predicted)
                # Per-step loss sums over the whole global batch, so every rank sees a divergence.
                step_sums = distributed.all_sum(
                    torch.stack(losses).double() * torch.tensor(sizes, device=self.device), world
                )
                finite = torch.isfinite(step_sums)
                if not bool(finite.all()):
                    first = int((~finite).nonzero()[0, 0])
                    raise diverged(epoch, step + first + 1, steps, self.train.lr)
                loss_sum += step_sums.sum()
                hits += (torch.cat(predictions) == labels).sum()
                step += len(losses)
                progress.update(len(losses))
        distributed.all_sum(hits, world)
        norms = (norm_sum / steps).tolist()  # of the averaged gradients: the same on every rank
        return float(loss_sum) / n, int(hits) / n, dict(zip(self.layers, norms, strict=True))

    def _step(
        self, x: torch.Tensor, y: torch.Tensor, share: float, norm_sum: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on this rank's rows of a batch: (mean loss, predicted classes), both
        still on the device (no host sync). `share` is this rank's share of the global batch
        (exactly 1.0 for a single process); each layer's weight-gradient norm adds to `norm_sum`."""
        with autocast(self.device, self.train.amp):
            scores = self.net(x)
            loss = self.objective(scores.float(), y) if len(y) else scores.sum() * 0.0
        self.optimizer.zero_grad(set_to_none=True)
        (loss * share).backward()
        norm_sum += torch.stack([torch.linalg.vector_norm(w.grad) for w in self.weights])
        self.optimizer.step()
        if self.ema:
            self.ema.update()
        if self.scheduler:
            self.scheduler.step()
        return loss.detach(), scores.detach().argmax(1)

    def evaluate(self, data: Split) -> tuple[float, float]:
        """Mean loss and accuracy on un-augmented images, in float32 even with train.amp: the best
        epoch is chosen by the numbers evaluate will report for the saved checkpoint."""
        result = score(self.evaluated, data.images, data.labels, self.loss, EVAL_BATCH)
        return result.loss, result.accuracy

    def run_epoch(self, train: Split, valid: Split, epoch: int) -> EpochResult:
        started = time.perf_counter()
        lr = self.lr()
        train_loss, train_acc, norms = self.train_epoch(train, epoch)
        valid_loss, valid_acc = self.evaluate(valid)
        return EpochResult(
            epoch,
            train_loss,
            train_acc,
            valid_loss,
            valid_acc,
            time.perf_counter() - started,
            lr,
            norms,
        )
