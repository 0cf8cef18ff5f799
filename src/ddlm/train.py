"""The training loop: AdamW with warm-up, gradient clipping, EMA weights, held-out NELBO, checkpoints.

Everything random is explicit so a resumed run is bitwise identical to an uninterrupted one: the
data order of epoch e is a permutation drawn from a generator seeded by (seed, e), so a step number
alone says which records it sees; the noise generator's state, the global RNG, the optimiser, the
EMA and the step are all in the checkpoint.

Faults: SIGINT and SIGTERM checkpoint and stop (exit codes 130 and 143); a non-finite loss or
gradient skips the step, and `max_bad_steps` of them in a row checkpoint the last good state and
stop (exit code 1). Under torchrun the same loop runs data-parallel (see distributed.py): every
rank sees the same global batch and noise and trains its rows, rank 0 alone writes and prints,
and every decision to stop is agreed by all ranks so that they stop at the same step.
"""

from __future__ import annotations

import copy
import json
import math
import signal
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .batches import TensorBatches
from .checkpoint import Checkpoint, CheckpointDir, load_optimizer, optimizer_tensors
from .config import TrainConfig
from .device import autocast, autocast_dtype
from .distributed import LocalRows, World
from .evaluate.likelihood import evaluate_bound
from .lr_schedules import LR_SCHEDULES
from .networks import Labelled
from .objectives import Objective
from .plots import plot_losses
from .rundir import LOSS_PLOT, METRICS


class StopTraining(Exception):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


# Adam moves each parameter by about the learning rate per step; the length head's logits must travel
# several nats from uniform (log 127 = 4.8) to the length distribution, which 1e-3 per step would not
# finish in a CPU budget (after 1,460 steps its samples were 16 residues short on average). The head is a
# categorical of its own, so it learns at 50 times the rate.
LENGTH_HEAD_LR_SCALE = 50.0

# A --time-budget run measures its speed over these steps (after the first, slower ones) and fixes
# its learning-rate horizon: the steps the rest of the budget buys at that speed.
PROBE_STEPS = (3, 10)


def parameter_groups(net: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: matrices decay, vectors do not, and a length head learns faster (LENGTH_HEAD_LR_SCALE)."""
    decay, no_decay, length = [], [], []
    for name, p in net.named_parameters():
        (length if name == "length_logits" else decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if length:
        groups.append({"params": length, "weight_decay": 0.0, "lr_scale": LENGTH_HEAD_LR_SCALE})
    return groups


class Trainer:
    def __init__(
        self,
        run_dir: Path,
        objective: Objective,
        net: torch.nn.Module,
        train_ids,
        heldout_ids: torch.Tensor,
        real_tokens,
        cfg: TrainConfig,
        device: torch.device,
        world: World | None = None,
    ):
        self.run_dir, self.objective, self.cfg, self.device = Path(run_dir), objective, cfg, device
        self.world = world or World(device=device)
        self.net = net.to(device)
        self.ema_net = copy.deepcopy(self.net).eval()
        for p in self.ema_net.parameters():
            p.requires_grad_(False)
        # a tensor of records, or any callable step -> batch (an endless generated stream)
        pad_id = getattr(getattr(net, "cfg", None), "pad_id", None)  # padding the network never sees: trim it
        if torch.is_tensor(train_ids):
            self.batches = TensorBatches(train_ids, cfg.batch_size, cfg.seed, pad_id, objective.length_multiple)
        else:
            self.batches = train_ids
        # the loss is per position of the full window, a constant scale for the optimiser whatever the trim
        self.positions = train_ids.shape[1] if torch.is_tensor(train_ids) else None
        # an evenly spaced subset: file order is not random (the first ACYP records are longer than average)
        spread = torch.linspace(0, len(heldout_ids) - 1, min(cfg.eval_sequences, len(heldout_ids))).round().long()
        self.heldout_rows = spread.unique()
        self.heldout_ids = heldout_ids[self.heldout_rows]
        # what the evaluations during training measure: the held-out part, or the validation part when
        # the split has one (set by the command; checkpoint selection and early stopping need it)
        self.eval_part = "heldout"
        self.best: dict | None = None  # {"step", "bits", "epoch"} of the best validation bound (keep_best, patience)
        self.since_best = 0  # evaluations since it
        self.last_eval: float | None = None
        # a labelled run (set by the command): step -> the batch's labels (data/labels.py), and the labels
        # of heldout_ids; every pass of the network is then given them
        self.labels, self.heldout_labels = None, None
        self.real_tokens = real_tokens
        self.optimizer = torch.optim.AdamW(
            parameter_groups(self.net, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, fused=device.type == "cuda"
        )
        # The noise generator has the same seed on every rank: the noise of the global batch is drawn
        # identically everywhere and each rank uses its rows' share (see distributed.py).
        self.gen = torch.Generator(device).manual_seed(cfg.seed)
        # what the loss calls: the network, in the DDP wrapper when distributed, compiled with --compile
        self.model: torch.nn.Module = self.net
        if self.world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.rows = self.world.rows(cfg.batch_size)
            torch.manual_seed(cfg.seed + self.world.rank)  # dropout: a different stream on each rank
            self.model = DistributedDataParallel(self.net, device_ids=[device] if device.type == "cuda" else None)
        if cfg.compile:
            # inductor fuses the network's element-wise work (GELU, norms, casts) into its products; the
            # parameters, checkpoints and EMA stay the plain module's (the compiled one shares them)
            self.model = torch.compile(self.model)
        self.step = 0
        self.horizon: int | None = None  # the steps the run will take, for the learning-rate schedule
        self.lr_schedule = LR_SCHEDULES[cfg.lr_schedule]()
        self.bad_steps_total = 0
        self.checkpoints = CheckpointDir(self.run_dir, keep=cfg.keep_checkpoints)
        self.amp = autocast_dtype(cfg.precision, device)
        self.metrics_path = self.run_dir / METRICS
        self._signal: int | None = None

    # --- state -----------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        return self.cfg.lr * self.lr_schedule.factor(step, self.cfg.warmup, self.horizon)

    def _rng_tensors(self) -> dict[str, torch.Tensor]:
        """The global RNG states (dropout): rank 0's as `rng.torch`, rank r's as `rng.torch.rank<r>`.
        Collective under data parallelism: every rank must call it."""
        states = {"rng.torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            states["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        out = {}
        for name, state in states.items():
            for rank, s in enumerate(self.world.gather(state)):
                out[name if rank == 0 else f"{name}.rank{rank}"] = s
        return out

    def save(self) -> Path | None:
        """Checkpoint the current state (rank 0 writes; a collective, so every rank calls it)."""
        rng = self._rng_tensors()
        if not self.world.is_main:
            return None
        opt_tensors, opt_meta = optimizer_tensors(self.optimizer)
        tensors = {f"model.{k}": v for k, v in self.net.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema_net.state_dict().items()})
        tensors.update(opt_tensors)
        tensors["rng.noise"] = self.gen.get_state()
        tensors.update(rng)
        meta = {"optimizer": opt_meta, "bad_steps_total": self.bad_steps_total, "horizon": self.horizon}
        meta.update(best=self.best, since_best=self.since_best, objective_state=self.objective.training_state())
        return self.checkpoints.save(self.step, tensors, meta)

    def _apply(self, ckpt: Checkpoint) -> None:
        """Load a verified checkpoint into the trainer; ValueError if it does not fit this run."""
        try:
            self.net.load_state_dict(ckpt.section("model"))
            self.ema_net.load_state_dict(ckpt.section("ema"))
            load_optimizer(self.optimizer, ckpt)
            self.gen.set_state(ckpt.tensors["rng.noise"])
            rank = self.world.rank
            generators = [("rng.torch", torch.set_rng_state, torch.manual_seed)]
            if self.device.type == "cuda":
                generators.append(
                    ("rng.cuda", lambda s: torch.cuda.set_rng_state(s, self.device), torch.cuda.manual_seed)
                )
            for name, set_state, seed in generators:
                key = name if rank == 0 else f"{name}.rank{rank}"
                if key in ckpt.tensors:
                    set_state(ckpt.tensors[key])
                elif name == "rng.torch" and rank == 0:
                    raise KeyError(key)
                else:  # saved by fewer processes, or on a CPU: a fresh stream, still a function of the step
                    seed((self.cfg.seed + rank) * 1_000_003 + ckpt.step)
            self.bad_steps_total = int(ckpt.meta.get("bad_steps_total", 0))
            self.horizon = ckpt.meta.get("horizon")
            self.best, self.since_best = ckpt.meta.get("best"), int(ckpt.meta.get("since_best", 0))
            self.objective.load_training_state(ckpt.meta.get("objective_state", {}))
        except (KeyError, RuntimeError, TypeError, ValueError, AttributeError) as e:
            name = self.checkpoints.dir / f"step-{ckpt.step:08d}.safetensors"
            raise ValueError(f"{name}: does not fit this run ({type(e).__name__}: {e})") from None
        self.step = ckpt.step

    def restore(self) -> bool:
        """Load the newest good checkpoint (every rank loads the same one); False if there is none."""
        if self.world.is_main:
            self.checkpoints.remove_orphans()
        self.world.barrier()
        ckpt = self.checkpoints.latest(apply=self._apply, report=self.world.is_main)
        step = -1 if ckpt is None else ckpt.step
        steps = {int(s) for s in self.world.gather(torch.tensor([step], dtype=torch.int64))}
        if len(steps) != 1:
            raise RuntimeError(
                f"ranks resumed from different checkpoints (steps {sorted(steps)}); is {self.run_dir} shared?"
            )
        return ckpt is not None

    # --- one step --------------------------------------------------------------------------------
    def train_step(self) -> dict | None:
        """One optimiser step; None if the loss or gradient was not finite (the step is skipped)."""
        x0 = self.batches(self.step).to(self.device, non_blocking=True)
        if self.world.distributed:
            return self._train_step_distributed(x0)
        net = self.model if self.labels is None else Labelled(self.model, self.labels(self.step).to(self.device))
        with autocast(self.device, self.amp):
            per_seq = self.objective.training_loss(net, x0, generator=self.gen)
            per_seq = per_seq + self.objective.length_nll(self.net, x0)
        loss = per_seq.mean() / (self.positions or x0.shape[1])  # nats per position: scale-free for the optimiser
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.grad_clip)
        finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
        return self._finish(x0, finite, per_seq.detach().double().sum(), grad_norm)

    def _train_step_distributed(self, x0: torch.Tensor) -> dict | None:
        """The same step with this rank's rows of the global batch x0: noise drawn for all of x0 from the
        shared generator, network and gradient on the local rows, gradients averaged by DDP. The mean of
        the ranks' losses is the single-process loss, so the averaged gradient is its gradient."""
        model = self.model
        if self.labels is not None:
            model = Labelled(model, self.labels(self.step)[self.rows].to(self.device))
        with autocast(self.device, self.amp):
            per_seq = self.objective.training_loss(LocalRows(model, self.rows), x0, generator=self.gen)
            per_seq = (per_seq + self.objective.length_nll(self.net, x0))[self.rows]
        loss = per_seq.mean() / (self.positions or x0.shape[1])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP averages the gradients over ranks here
        grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.grad_clip)
        nats, loss_sum = self.world.sum(torch.stack([per_seq.detach().double().sum(), loss.detach().double()]))
        finite = torch.isfinite(loss_sum) & torch.isfinite(grad_norm)  # the same decision on every rank
        return self._finish(x0, finite, nats, grad_norm)

    def _finish(
        self, x0: torch.Tensor, finite: torch.Tensor, nats: torch.Tensor, grad_norm: torch.Tensor
    ) -> dict | None:
        """Skip the step (None) unless `finite`, else update; the step's figures for the log.

        The decision and the figures reach the host in one transfer: on a GPU each `.item()` waits for
        the device, and a step used to wait four times. The values are the same (float64 holds the
        float32 norm and the token count exactly)."""
        tokens = torch.as_tensor(self.real_tokens(x0)).sum().to(nats.device, torch.float64)
        ok, nats_sum, norm, token_count = torch.stack([finite.double(), nats, grad_norm.double(), tokens]).tolist()
        if not ok:
            return None
        self._update()
        return {"nats": nats_sum, "tokens": int(token_count), "positions": x0.numel(), "grad_norm": norm}

    def _update(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step) * group.get("lr_scale", 1.0)
        self.optimizer.step()
        decay = min(self.cfg.ema, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            torch._foreach_lerp_(list(self.ema_net.parameters()), list(self.net.parameters()), 1 - decay)

    def heldout_bits(self) -> dict:
        return evaluate_bound(
            self.ema_net,
            self.objective,
            self.heldout_ids,
            self.real_tokens(self.heldout_ids),
            time_samples=1,
            batch_size=64,
            seed=1234,  # the same times and noise at every evaluation, so the curve's wiggles are the model's
            device=self.device,
            autocast_dtype=self.amp,
            labels=self.heldout_labels,
        )

    def adapt(self) -> dict | None:
        """The objective's estimator fitted to the evaluation records (objectives.base.Objective.adapt),
        with the EMA weights, fixed noise and the evaluation's precision, as the bound is measured."""
        ids = self.heldout_ids.to(self.device)
        generator = torch.Generator(self.device).manual_seed(4321)
        with autocast(self.device, self.amp):
            return self.objective.adapt(self.ema_net, ids, generator)

    @property
    def epoch(self) -> float | None:
        """Passes over the training records so far (None for an endless stream)."""
        records = len(self.batches.ids) if isinstance(self.batches, TensorBatches) else None
        return None if records is None else self.step * self.cfg.batch_size / records

    def evaluate(self) -> bool:
        """Evaluate the EMA weights on the evaluation part and log it; with a validation part, keep the
        best weights (keep_best) and count evaluations without improvement. True when patience is spent."""
        bits = self.last_eval = self.heldout_bits()["bits_per_token"]
        record = {"step": self.step, f"{self.eval_part}_bits_per_token": bits, **(self.adapt() or {})}
        self.log(record if self.epoch is None else {**record, "epoch": self.epoch})
        if self.eval_part != "valid":
            return False
        if self.best is None or bits < self.best["bits"]:
            self.best, self.since_best = {"step": self.step, "bits": bits, "epoch": self.epoch}, 0
            if self.cfg.keep_best and self.world.is_main:
                ema = {f"ema.{k}": v for k, v in self.ema_net.state_dict().items()}
                self.checkpoints.save_best(self.step, ema, {"valid_bits_per_token": bits, "epoch": self.epoch})
        else:
            self.since_best += 1
        return self.cfg.patience is not None and self.since_best >= self.cfg.patience

    # --- the loop --------------------------------------------------------------------------------
    def log(self, record: dict) -> None:
        if not self.world.is_main:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _on_signal(self, signum, frame) -> None:
        self._signal = signum

    def fit(self, steps: int | None, time_budget_s: float | None, progress: bool = True) -> dict:
        """Train until `steps` total steps or `time_budget_s` seconds of this session, then checkpoint."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        t0 = time.perf_counter()
        tally = Tally(t0)  # what the steps since the last log line did
        consecutive_bad = 0
        if steps is not None:
            self.horizon = steps
        probe = {"start": self.step} if self.horizon is None else None  # until the horizon is fixed
        bar = tqdm(
            total=steps if steps is not None else int(time_budget_s),
            initial=self.step if steps is not None else 0,
            unit="step" if steps is not None else "s",
            disable=not progress or not self.world.is_main,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        try:
            while not self._should_stop(steps, time_budget_s, time.perf_counter() - t0):
                stats = self.train_step()
                if stats is None:
                    consecutive_bad += 1
                    self._skipped_step(consecutive_bad)
                    self.step += 1
                    continue
                consecutive_bad = 0
                self.step += 1
                if probe is not None and self._probe_horizon(probe, time_budget_s - (time.perf_counter() - t0)):
                    probe = None
                tally.add(stats)
                if self.step % self.cfg.log_every == 0:
                    record = tally.record(self.step, self.lr_at(self.step - 1), stats["grad_norm"], t0)
                    self.log(record if self.epoch is None else {**record, "epoch": self.epoch})
                    self._postfix(bar, record["train_bits_per_token"])
                    tally = Tally(time.perf_counter())
                if self.step % self.cfg.eval_every == 0:
                    patience_spent = self.evaluate()
                    if self.world.is_main:
                        plot_losses(self.metrics_path, self.run_dir / LOSS_PLOT)
                    if patience_spent:
                        self.log({"step": self.step, "event": "early stop", "best": self.best})
                        break
                if self.step % self.cfg.checkpoint_every == 0:
                    self.save()
                if steps is not None:
                    bar.update(1)
                else:
                    bar.n = min(int(time.perf_counter() - t0), int(time_budget_s))
                    bar.refresh()
        finally:
            bar.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
        self.save()
        if self.world.is_main:
            plot_losses(self.metrics_path, self.run_dir / LOSS_PLOT)
        summary = {"steps": self.step, "seconds": time.perf_counter() - t0, "bad_steps": self.bad_steps_total}
        if self.epoch is not None:
            summary["epochs"] = self.epoch
        return summary if self.best is None else {**summary, "best": self.best}

    def _postfix(self, bar, train_bits: float) -> None:
        shown = {"loss": f"{train_bits:.3f}"}
        if self.epoch is not None:
            shown["epoch"] = f"{self.epoch:.1f}"
        if self.last_eval is not None:
            shown[self.eval_part] = f"{self.last_eval:.3f}"
        if self.best is not None:
            shown["best"] = f"{self.best['bits']:.3f}"
        bar.set_postfix(shown, refresh=False)

    def _probe_horizon(self, probe: dict, seconds_left: float) -> bool:
        """Time this session's steps PROBE_STEPS[0] to [1] (`probe` holds the session's first step); at
        the last, fix the horizon: this step plus the steps the seconds left buy at that speed (rank 0's
        figure on every rank). True once fixed."""
        first, last = (probe["start"] + p for p in PROBE_STEPS)
        if self.step == first:
            probe["time"] = time.perf_counter()
        if self.step < last:
            return False
        seconds_per_step = (time.perf_counter() - probe["time"]) / (last - first)
        estimate = torch.tensor([self.step + int(seconds_left / max(seconds_per_step, 1e-9))], dtype=torch.int64)
        self.horizon = int(self.world.gather(estimate)[0])
        self.log({"step": self.step, "event": "learning-rate horizon fixed", "horizon": self.horizon})
        return True

    def _should_stop(self, steps: int | None, time_budget_s: float | None, elapsed: float) -> bool:
        """True when the steps or the time are used up; a signal checkpoints and raises StopTraining.
        Under data parallelism every rank takes the same decision at the same step."""
        if steps is not None and self.step >= steps:
            return True
        time_up = time_budget_s is not None and elapsed >= time_budget_s
        signum = self._signal
        if self.world.distributed:
            time_up, got_int, got_term = self.world.any(time_up, signum == signal.SIGINT, signum == signal.SIGTERM)
            signum = signal.SIGINT if got_int else signal.SIGTERM if got_term else None
        if time_up:
            return True
        if signum is not None:
            self.save()
            name = signal.Signals(signum).name
            raise StopTraining(f"{name} received: checkpoint saved at step {self.step}", 128 + signum)
        return False

    def _skipped_step(self, consecutive_bad: int) -> None:
        """Count a step whose loss or gradient was not finite; too many in a row stop the run."""
        self.bad_steps_total += 1
        event = {"event": "non-finite loss or gradient: step skipped", "bad_steps_total": self.bad_steps_total}
        self.log({"step": self.step, **event})
        if consecutive_bad >= self.cfg.max_bad_steps:
            self.save()  # parameters are still the last good ones: skipped steps change nothing
            raise StopTraining(
                f"{consecutive_bad} consecutive non-finite steps at step {self.step}; stopped. "
                "The last good state is checkpointed; try a lower --lr.",
                1,
            )


class Tally:
    """Sums over the training steps since the last log line, for its averages."""

    def __init__(self, start: float):
        self.start, self.nats, self.tokens, self.positions = start, 0.0, 0, 0

    def add(self, stats: dict) -> None:
        self.nats += stats["nats"]
        self.tokens += stats["tokens"]
        self.positions += stats["positions"]

    def record(self, step: int, lr: float, grad_norm: float, t0: float) -> dict:
        now = time.perf_counter()
        return {
            "step": step,
            "train_bits_per_token": self.nats / math.log(2) / self.tokens,
            "lr": lr,
            "grad_norm": grad_norm,
            "positions_per_s": self.positions / (now - self.start),
            "elapsed_s": now - t0,
        }
