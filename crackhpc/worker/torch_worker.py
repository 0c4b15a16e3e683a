"""PyTorch worker: one run, on one process or data-parallel across the job's tasks (DDP or Horovod).

Input is the run folder's split manifest decoded once into the uint8 image cache. With a frozen
backbone and the feature cache on (the default), the backbone runs once per image and the head
trains on cached features; otherwise images flow through backbone and head every epoch.
Rank 0 alone writes the run folder; every rank resumes from the same checkpoint.
"""

from __future__ import annotations

import datetime
import io
import socket
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from .. import atomic, rundir
from ..config import RunSpec
from . import backends, common, distributed, fastpath
from .distributed import DistEnv
from .features import FeatureKey
from .torch_models import build, extract, for_inference


class _Gather(torch.utils.data.Dataset):
    """Indexed by a whole batch of positions: one fancy-index per batch instead of per image."""

    def __init__(self, inputs, labels: np.ndarray):
        self.inputs, self.labels = inputs, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, idx):
        idx = np.sort(np.asarray(idx))
        x = self.inputs[idx]
        return torch.as_tensor(np.ascontiguousarray(x)), torch.from_numpy(self.labels[idx]), torch.from_numpy(idx)


def _device(env: DistEnv) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _Single:
    name = backends.SINGLE

    def gather(self, obj) -> list:
        return [obj]

    def wrap(self, model: nn.Module, optimizer, device: torch.device):
        return model, optimizer

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's BatchNorm statistics to every rank, as DDP does at each training forward: each
        rank's last forward updated its own, and evaluation and the checkpoint must see one model."""

    def close(self) -> None:
        pass


class _DDP(_Single):
    name = "ddp"

    def __init__(self, env: DistEnv):
        self.world_size = env.world_size
        env.export()
        dist.init_process_group(
            "nccl" if torch.cuda.is_available() else "gloo",
            store=_rendezvous(env),
            rank=env.rank,
            world_size=env.world_size,
        )

    def gather(self, obj) -> list:
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def wrap(self, model, optimizer, device):
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        ), optimizer

    def sync_buffers(self, model: nn.Module) -> None:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)

    def close(self) -> None:
        dist.destroy_process_group()


def _rendezvous(env: DistEnv) -> dist.TCPStore:
    """The ranks meet at rank 0's store within the rendezvous timeout (the collectives keep torch's
    own, longer one: rank 0 may build a feature cache while the others wait), or fail in one line."""
    timeout = distributed.rendezvous_timeout_s()
    try:
        return dist.TCPStore(
            env.master_addr,
            env.master_port,
            env.world_size,
            is_master=env.is_main,
            timeout=datetime.timedelta(seconds=timeout),
        )
    except (RuntimeError, OSError) as exc:  # torch's DistStoreError / DistNetworkError are RuntimeErrors
        why = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
        raise backends.unmet("ddp", env, env.master_port, why) from None


class _Horovod(_Single):
    name = "horovod"

    def __init__(self, hvd):
        self.hvd = hvd

    def gather(self, obj) -> list:
        return self.hvd.allgather_object(obj)

    def wrap(self, model, optimizer, device):
        # Wrapped before the checkpoint loads: DistributedOptimizer starts from a fresh optimizer state.
        optimizer = self.hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
        self.hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        self.hvd.broadcast_optimizer_state(optimizer, root_rank=0)
        return model, optimizer

    def sync_buffers(self, model: nn.Module) -> None:
        self.hvd.broadcast_parameters(dict(model.named_buffers()), root_rank=0)

    def close(self) -> None:
        self.hvd.shutdown()


class Trainer:
    def __init__(self, spec: RunSpec, run_dir: Path, env: DistEnv, log, comm: _Single):
        self.spec, self.cfg, self.run_dir, self.env, self.log, self.comm = spec, spec.train, run_dir, env, log, comm
        self.backend = comm.name
        self.device = _device(env)
        self.workers = common.cpu_workers(spec)

    # -- data -----------------------------------------------------------------------------
    def prepare(self) -> None:
        cfg = self.cfg
        self.data = data = common.load_data(self.spec, self.run_dir, self.workers, self.log)
        self.labels, self.index = data.labels, data.index
        torch.manual_seed(cfg.seed)
        backbone, head, weights_id = build(
            cfg.model, cfg.pretrained, num_classes=len(data.classes), input_size=cfg.input_size
        )
        if cfg.freeze_backbone:
            backbone.requires_grad_(False)
        self.feature_mode = cfg.freeze_backbone and cfg.feature_cache
        if self.feature_mode:
            backbone = for_inference(backbone)
            self.choice = self._choose(backbone, "features", len(data.items))
            weights = weights_id if cfg.pretrained else f"random-seed{cfg.seed}"
            feats, self.feature_cache = common.features(
                data,
                FeatureKey(
                    cfg.model, weights, cfg.input_size, str(fastpath.torch_autocast(self.choice)), self.spec.preprocess
                ),
                lambda: extract(backbone, data.images, self.device, choice=self.choice),
                self.log,
            )
            self.inputs: torch.Tensor | np.ndarray = torch.from_numpy(feats)
            self.model: nn.Module = head
            self.autocast = None  # the head, a linear layer over the cached features, trains in fp32
        else:
            self.feature_cache = "off"
            self.inputs = data.images
            self.model = nn.Sequential(backbone, head)
            self._set_train_mode()
            self.choice = self._choose(self.model, "train", cfg.epochs * len(data.index["train"]))
            self.autocast = fastpath.torch_autocast(self.choice)
            fastpath.set_memory_format(self.model, self.choice.memory_format)
        self.model.to(self.device)
        self.train_model, self.optimizer = self.comm.wrap(self.model, self._optimizer(), self.device)
        if self.choice.compile and not self.feature_mode:
            self.train_model = torch.compile(self.train_model)

    def _choose(self, module: nn.Module, phase: str, images: int) -> fastpath.Choice:
        job = fastpath.Job.of(self.cfg, phase, images)
        choice = fastpath.torch_choice(job, module, self.device, self.data.cache_dir, self.log)
        common.record_choice(self.run_dir, self.env, self.log, choice)
        return choice

    def _optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.cfg.lr)
        return torch.optim.SGD(params, lr=self.cfg.lr, momentum=0.9)

    def _loader(self, split: str, shuffle: bool, epoch: int = 0) -> DataLoader:
        """Batches of this rank's share; the global batch is `batch_size`, as in the study."""
        positions = self.index[split]
        if shuffle:
            # it reads only len(positions): its indices pick from them
            sampler = DistributedSampler(
                positions, num_replicas=self.env.world_size, rank=self.env.rank, shuffle=True, seed=self.cfg.seed
            )
            sampler.set_epoch(epoch)
            order = positions[list(sampler)]
        else:  # evaluation: an exact, unpadded shard
            order = positions[self.env.rank :: self.env.world_size]
        batches = list(
            BatchSampler(order.tolist(), common.per_rank_batch(self.cfg.batch_size, self.env), drop_last=False)
        )
        on_disk = not isinstance(self.inputs, torch.Tensor)
        return DataLoader(
            _Gather(self.inputs, self.labels),
            sampler=batches,
            batch_size=None,
            num_workers=self.workers if on_disk and self.workers > 1 else 0,
            pin_memory=self.device.type == "cuda",
        )

    # -- loops ----------------------------------------------------------------------------
    def _forward(self, model, x):
        with torch.autocast(self.device.type, dtype=self.autocast) if self.autocast else nullcontext():
            return model(x.to(self.device, non_blocking=True)).float()

    def _set_train_mode(self) -> None:
        self.model.train()
        if self.cfg.freeze_backbone and not self.feature_mode:
            self.model[0].eval()  # frozen BatchNorm keeps its ImageNet statistics

    def train_epoch(self, epoch: int) -> tuple[float, float, int]:
        self._set_train_mode()
        loss_fn = nn.CrossEntropyLoss()
        total = correct = seen = 0.0
        for x, y, _ in self._loader("train", shuffle=True, epoch=epoch):
            y = y.to(self.device)
            logits = self._forward(self.train_model, x)
            loss = loss_fn(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        self.comm.sync_buffers(self.model)
        total, correct, seen = (sum(col) for col in zip(*self.comm.gather((total, correct, seen))))
        return total / max(seen, 1), correct / max(seen, 1), int(seen)

    @torch.no_grad()
    def evaluate(self, split: str):
        """(loss, accuracy, records) over the whole split; records are (position, predicted, probability)."""
        self.model.eval()
        loss_fn = nn.CrossEntropyLoss(reduction="sum")
        total, records = 0.0, list[tuple[int, int, float]]()
        for x, y, idx in self._loader(split, shuffle=False):
            y = y.to(self.device)
            logits = self._forward(self.model, x)
            total += loss_fn(logits, y).item()
            prob, pred = torch.softmax(logits, 1).max(1)
            records += zip(idx.tolist(), pred.tolist(), prob.tolist())
        gathered = self.comm.gather((total, records))
        records = sorted(r for _, part in gathered for r in part)
        return sum(t for t, _ in gathered) / max(len(records), 1), common.accuracy(records, self.labels), records

    def agree(self, flag: bool) -> bool:
        return any(self.comm.gather(flag))

    # -- checkpoints ----------------------------------------------------------------------
    def load_checkpoint(self) -> dict:
        def read(path):
            state = torch.load(path, map_location="cpu", weights_only=False)
            self.model.load_state_dict(state["model"])
            if "optimizer" in state:  # a completed run's checkpoint has the weights alone (common.finish)
                self.optimizer.load_state_dict(state["optimizer"])
                torch.set_rng_state(state["rng"])
            return state

        return common.resume(self.run_dir / rundir.CHECKPOINT["torch"], self.data, self.log, read)

    def save_checkpoint(self, epoch: int, rows: list, elapsed: float) -> None:
        buf = io.BytesIO()
        torch.save(
            {
                **common.bookkeeping(epoch, rows, elapsed, self.data),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "rng": torch.get_rng_state(),
            },
            buf,
        )
        atomic.write_bytes(self.run_dir / rundir.CHECKPOINT["torch"], buf.getvalue())

    def save_weights(self, path: Path, state: dict) -> None:
        buf = io.BytesIO()
        torch.save({**state, "model": self.model.state_dict()}, buf)
        atomic.write_bytes(path, buf.getvalue())

    def load_weights(self, path: Path) -> None:
        self.model.load_state_dict(torch.load(path, map_location="cpu", weights_only=False)["model"])

    # -- the run --------------------------------------------------------------------------
    def run(self) -> dict:
        start = time.perf_counter()
        self.prepare()
        state = self.load_checkpoint()
        outcome = common.fit(self, start, state)
        if self.env.world_size == 1:
            return common.result(self, outcome, None)
        digest = common.state_digest(t.detach().cpu().numpy() for t in self.model.state_dict().values())
        in_sync = len(set(self.comm.gather(digest))) == 1
        return {**common.result(self, outcome, in_sync), "hosts": self.comm.gather(socket.gethostname())}


def train(spec: RunSpec, run_dir: Path, env: DistEnv, log) -> dict:
    backend = backends.resolve("torch", spec.train.backend, env.world_size)
    comm: _Single
    if backend == "horovod":
        hvd, env = backends.init_horovod("horovod.torch", env)
        comm = _Horovod(hvd)
    else:
        comm = _DDP(env) if backend == "ddp" else _Single()
    # restored after: an in-process run (debug executor) must not change the caller's later arithmetic
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, spec.resources.cpus_per_task))
    try:
        with backends.rank_failures(backend) if comm.name != backends.SINGLE else nullcontext():
            return Trainer(spec, run_dir, env, log, comm).run()
    finally:
        comm.close()
        torch.set_num_threads(threads)
