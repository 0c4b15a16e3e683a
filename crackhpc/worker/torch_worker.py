"""PyTorch worker: one run, on one process or data-parallel (DDP) across the job's tasks.

Input is the run folder's split manifest decoded once into the uint8 image cache. With a frozen
backbone and the feature cache on (the default), the backbone runs once per image and the head
trains on cached features; otherwise images flow through backbone and head every epoch.
Rank 0 alone writes the run folder; every rank resumes from the same checkpoint.
"""
from __future__ import annotations

import io
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from .. import atomic, rundir
from ..data.images import ImageCache
from ..data.layout import CLASSES
from ..data.split import manifest_hash, read_manifest
from ..errors import DataError
from ..grid import RunSpec
from .distributed import DistEnv
from .features import cache_key, cached_features, extract
from .torch_models import build

CHECKPOINT = "checkpoint.pt"


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


def _autocast_dtype(precision: str, device: torch.device):
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def _all_sum(values: list[float], device: torch.device, distributed: bool) -> list[float]:
    if not distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


class Trainer:
    def __init__(self, spec: RunSpec, run_dir: Path, env: DistEnv, log):
        self.spec, self.cfg, self.run_dir, self.env, self.log = spec, spec.train, run_dir, env, log
        self.distributed = env.world_size > 1
        self.device = _device(env)
        self.autocast = _autocast_dtype(self.cfg.precision, self.device)
        self.workers = self.cfg.num_workers if self.cfg.num_workers is not None else spec.resources.cpus_per_task

    # -- data -----------------------------------------------------------------------------
    def prepare(self) -> None:
        cfg = self.cfg
        self.items = read_manifest(self.run_dir / rundir.SPLIT)
        cache_dir = self.run_dir.parent / ".cache"
        t0 = time.perf_counter()
        images = ImageCache.build(self.items, self.spec.data.root, cfg.input_size, cache_dir / "images", self.workers)
        self.log(f"image cache ready in {time.perf_counter() - t0:.1f}s ({images.n_corrupt} unreadable images skipped)")
        self.skipped = images.n_corrupt
        self.labels = np.array([i.label for i in self.items], dtype=np.int64)
        self.index = {s: np.array([k for k, it in enumerate(self.items) if it.split == s and images.ok[k]], dtype=np.int64)
                      for s in ("train", "valid", "test")}
        if not len(self.index["train"]) or not len(self.index["test"]):
            raise DataError(f"{self.spec.data.root}: no readable images in the train or test split "
                            f"({images.n_corrupt} of {len(self.items)} failed to decode; run `crackhpc data verify`)")

        torch.manual_seed(cfg.seed)
        backbone, head, weights_id = build(cfg.model, cfg.pretrained)
        if cfg.freeze_backbone:
            backbone.requires_grad_(False)
        self.feature_mode = cfg.freeze_backbone and cfg.feature_cache
        if self.feature_mode:
            weights = weights_id if cfg.pretrained else f"random-seed{cfg.seed}"
            key = cache_key(cfg.model, weights, cfg.input_size, manifest_hash(self.items), str(self.autocast))
            t0 = time.perf_counter()
            feats, computed = cached_features(cache_dir / "features", key,
                                              lambda: extract(backbone, images.images, self.device, autocast_dtype=self.autocast))
            self.feature_cache = "computed" if computed else "reused"
            self.log(f"features {self.feature_cache} ({feats.shape[1]}-d) in {time.perf_counter() - t0:.1f}s")
            self.inputs = torch.from_numpy(feats)
            self.model = head
        else:
            self.feature_cache = "off"
            self.inputs = images.images
            self.model = nn.Sequential(backbone, head)
        self.model.to(self.device)
        if self.device.type == "cuda" or not self.feature_mode:
            self.model.to(memory_format=torch.channels_last)
        self.head = head
        self.optimizer = self._optimizer()

    def _optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.cfg.lr)
        return torch.optim.SGD(params, lr=self.cfg.lr, momentum=0.9)

    def _loader(self, split: str, shuffle: bool, epoch: int = 0) -> DataLoader:
        """Batches of this rank's share; the global batch is `batch_size`, as in the study."""
        positions = self.index[split]
        if shuffle:
            sampler = DistributedSampler(positions, num_replicas=self.env.world_size, rank=self.env.rank,
                                         shuffle=True, seed=self.cfg.seed)
            sampler.set_epoch(epoch)
            order = positions[list(sampler)]
        else:  # evaluation: an exact, unpadded shard
            order = positions[self.env.rank::self.env.world_size]
        per_rank = max(1, -(-self.cfg.batch_size // self.env.world_size))
        batches = list(BatchSampler(order.tolist(), per_rank, drop_last=False))
        on_disk = not isinstance(self.inputs, torch.Tensor)
        return DataLoader(_Gather(self.inputs, self.labels), sampler=batches, batch_size=None,
                          num_workers=self.workers if on_disk and self.workers > 1 else 0,
                          pin_memory=self.device.type == "cuda")

    # -- loops ----------------------------------------------------------------------------
    def _forward(self, model, x):
        with torch.autocast(self.device.type, dtype=self.autocast) if self.autocast else nullcontext():
            return model(x.to(self.device, non_blocking=True)).float()

    def _set_train_mode(self) -> None:
        self.model.train()
        if self.cfg.freeze_backbone and not self.feature_mode:
            self.model[0].eval()  # frozen BatchNorm keeps its ImageNet statistics

    def train_epoch(self, model, epoch: int) -> tuple[float, float, int]:
        self._set_train_mode()
        loss_fn = nn.CrossEntropyLoss()
        total = correct = seen = 0.0
        for x, y, _ in self._loader("train", shuffle=True, epoch=epoch):
            y = y.to(self.device)
            logits = self._forward(model, x)
            loss = loss_fn(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        total, correct, seen = _all_sum([total, correct, seen], self.device, self.distributed)
        return total / max(seen, 1), correct / max(seen, 1), int(seen)

    @torch.no_grad()
    def evaluate(self, split: str):
        """(loss, accuracy, records) over the whole split; records are (position, predicted, probability)."""
        self.model.eval()
        loss_fn = nn.CrossEntropyLoss(reduction="sum")
        total, records = 0.0, []
        for x, y, idx in self._loader(split, shuffle=False):
            y = y.to(self.device)
            logits = self._forward(self.model, x)
            total += loss_fn(logits, y).item()
            prob, pred = torch.softmax(logits, 1).max(1)
            records += zip(idx.tolist(), pred.tolist(), prob.tolist())
        if self.distributed:
            gathered = [None] * self.env.world_size
            dist.all_gather_object(gathered, (total, records))
            total = sum(g[0] for g in gathered)
            records = [r for g in gathered for r in g[1]]
        records.sort()
        n = len(records)
        correct = sum(1 for pos, pred, _ in records if pred == self.labels[pos])
        return total / max(n, 1), correct / max(n, 1), records

    # -- checkpoints ----------------------------------------------------------------------
    def load_checkpoint(self) -> dict:
        path = self.run_dir / CHECKPOINT
        if not path.exists():
            return {"epoch": 0, "rows": [], "elapsed": 0.0}
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        self.log(f"resumed from {path.name} after epoch {state['epoch']}")
        return state

    def save_checkpoint(self, epoch: int, rows: list, elapsed: float) -> None:
        buf = io.BytesIO()
        torch.save({"epoch": epoch, "rows": rows, "elapsed": elapsed, "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(), "rng": torch.get_rng_state()}, buf)
        atomic.write_bytes(self.run_dir / CHECKPOINT, buf.getvalue())

    # -- the run --------------------------------------------------------------------------
    def run(self) -> dict:
        start = time.perf_counter()
        self.prepare()
        state = self.load_checkpoint()
        rows, first = list(state["rows"]), state["epoch"] + 1
        elapsed_before = state["elapsed"]
        model = self.model
        if self.distributed:
            model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        for epoch in range(first, self.cfg.epochs + 1):
            t0 = time.perf_counter()
            train_loss, train_acc, n_train = self.train_epoch(model, epoch)
            val_loss, val_acc, val_records = self.evaluate("valid")
            dt = time.perf_counter() - t0
            rows.append([epoch, train_loss, train_acc, val_loss, val_acc, dt, (n_train + len(val_records)) / dt])
            self.log(f"epoch {epoch}/{self.cfg.epochs}: train loss {train_loss:.4f} acc {train_acc:.4f}, "
                     f"val loss {val_loss:.4f} acc {val_acc:.4f} ({dt:.1f}s)")
            if self.env.is_main:
                atomic.write_csv(self.run_dir / rundir.METRICS, rundir.METRIC_COLUMNS, rows)
                self.save_checkpoint(epoch, rows, elapsed_before + time.perf_counter() - start)
                rundir.update_result(self.run_dir, status="running", epochs_done=epoch)
        test_loss, test_acc, records = self.evaluate("test")
        wall = elapsed_before + time.perf_counter() - start
        n_images = self.cfg.epochs * (len(self.index["train"]) + len(self.index["valid"]))
        if self.env.is_main:
            wrong = [(self.items[p].path, CLASSES[self.labels[p]], CLASSES[pred], round(prob, 6))
                     for p, pred, prob in records if pred != self.labels[p]]
            atomic.write_csv(self.run_dir / rundir.MISCLASSIFIED, ("path", "true", "predicted", "probability"), wrong)
        val_accs = [r[4] for r in rows]
        best = int(np.argmax(val_accs)) if val_accs else 0
        return {
            "epochs_done": len(rows), "best_val_acc": val_accs[best] if val_accs else None,
            "best_epoch": best + 1 if val_accs else None, "test_loss": test_loss, "test_acc": test_acc,
            "n_train": int(len(self.index["train"])), "n_valid": int(len(self.index["valid"])),
            "n_test": len(records), "skipped_images": self.skipped, "wall_time_s": round(wall, 3),
            "images_per_s": round(n_images / wall, 2) if wall > 0 else None, "world_size": self.env.world_size,
            "device": str(self.device), "feature_cache": self.feature_cache,
        }


def train(spec: RunSpec, run_dir: Path, env: DistEnv, log) -> dict:
    if env.world_size > 1:
        env.export()
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, init_method="env://", rank=env.rank, world_size=env.world_size)
    torch.set_num_threads(max(1, spec.resources.cpus_per_task))
    try:
        return Trainer(spec, run_dir, env, log).run()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
