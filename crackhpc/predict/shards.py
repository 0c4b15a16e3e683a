"""A prediction as jobs: the plan (predict.json), one job array of shards with a sweep's resource
options, each shard writing its part atomically, and the merge into one set of tables and a page.

The prediction folder keeps its jobs in sweep.json in a sweep folder's format and each shard's
state in shard-NNN/result.json, so `crackhpc status` and `crackhpc cancel` work on it as on a sweep."""

from __future__ import annotations

import csv
import dataclasses
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import atomic, procs, rundir
from ..config import Resources, apply_overrides, validate
from ..data.layout import CLASSES, is_crack
from ..errors import CrackhpcError
from ..jobs import RecordedJob, attempt
from ..profiles import RESOURCE_KEYS, Profile, apply_profile
from ..record import PREDICTION, SweepFolder
from ..states import RunState
from . import inputs, maps
from .model import CRACK, Classifier

PLAN, PREDICTIONS, SUMMARY, ERRORS, INDEX_MD, INDEX_HTML = (
    "predict.json",
    "predictions.csv",
    "summary.csv",
    "errors.csv",
    "index.md",
    "index.html",
)
MAPS, OVERLAYS = "maps", "overlays"
PREDICTION_COLUMNS = ("image", *maps.PATCH_COLUMNS)
ERROR_COLUMNS = ("image", "reason")
# What makes two predictions the same: a rerun with these unchanged resumes, anything else is refused.
PLAN_KEYS = ("model", "photos", "settings", "shards")
FIX_PLAN = "delete the prediction folder (or give another --out) and run `crackhpc predict` again"


@dataclass(frozen=True)
class Settings:
    tile: int = 227
    stride: int | None = None  # default: the tile, patches side by side
    threshold: float = 0.5
    max_megapixels: float = inputs.DEFAULT_MAX_MEGAPIXELS
    batch: int = 64

    def check(self) -> Settings:
        if self.tile < 8:
            raise CrackhpcError(f"--tile {self.tile}: give the patch side in px, at least 8 (the crops: 227)")
        if self.stride is not None and not 1 <= self.stride <= self.tile:
            raise CrackhpcError(f"--stride {self.stride}: give 1..{self.tile} (the tile; smaller strides overlap)")
        if not 0 < self.threshold < 1:
            raise CrackhpcError(f"--threshold {self.threshold}: give a probability between 0 and 1")
        if self.max_megapixels <= 0 or self.batch < 1:
            raise CrackhpcError("--max-megapixels and --batch must be positive")
        return self


def columns(classes: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(predictions.csv's, summary.csv's) columns: crack probabilities, or N classes' top class."""
    if is_crack(classes):
        return PREDICTION_COLUMNS, maps.SUMMARY_COLUMNS
    return ("image", *maps.class_patch_columns(classes)), maps.class_summary_columns(classes)


def photo_ids(photos: list[Path]) -> list[str]:
    """A file-name-safe id per photo for its map and overlay: its stem, with the photo's number
    appended where two photos share a stem."""
    stems = [re.sub(r"[^A-Za-z0-9._-]", "_", p.stem) or "photo" for p in photos]
    twice = {s for s in stems if stems.count(s) > 1}
    return [f"{s}-{k:06d}" if s in twice else s for k, s in enumerate(stems)]


def shard_ids(n: int) -> list[str]:
    return [f"shard-{k:03d}" for k in range(n)]


def make_plan(
    run_dir: Path,
    photos: list[Path],
    input_errors: list[tuple[str, str]],
    settings: Settings,
    n_shards: int,
    resources: Resources,
) -> dict:
    chunks = np.array_split(np.arange(len(photos)), n_shards)
    return {
        "model": str(run_dir),
        "photos": [{"path": str(p), "id": i} for p, i in zip(photos, photo_ids(photos))],
        "settings": dataclasses.asdict(settings),
        "shards": {s: c.tolist() for s, c in zip(shard_ids(n_shards), chunks)},
        "input_errors": [list(e) for e in input_errors],
        "cpus_per_task": resources.cpus_per_task,
    }


def prediction_resources(trained: Resources, overrides: list[str], profile: Profile | None = None) -> Resources:
    """The run's own resources, one task on at most one GPU (a shard is one process), with the
    command line's `--set resources.KEY=VALUE` edits. A cluster profile (`--cluster`) replaces what
    belonged to the cluster the run trained on: its partition, account, setup lines and the like."""
    plain = dict(
        trained.model_dump(mode="json"), nodes=1, tasks_per_node=1, gpus_per_node=min(1, trained.gpus_per_node)
    )
    if profile is not None:
        plain = apply_profile({"resources": {k: v for k, v in plain.items() if k not in RESOURCE_KEYS}}, profile)[
            "resources"
        ]
    for item in overrides:
        if not item.startswith("resources."):
            raise CrackhpcError(f"--set {item}: predict takes resources.KEY=VALUE only, e.g. resources.gpus_per_node=1")
    raw = apply_overrides({"resources": plain}, overrides, Path("the run's resources"))
    return validate(Resources, raw["resources"], "--set", ("resources",))


# -- one shard: the job's work --------------------------------------------------------------


def _reuse(
    out_dir: Path, photo: dict, classes: tuple[str, ...]
) -> tuple[list[inputs.Box], np.ndarray, tuple[int, int]] | None:
    """A photo's map written by an earlier attempt of this shard (requeued or rerun), if complete:
    the crack probabilities, or with N classes each class's."""
    csv_path, png = out_dir / MAPS / f"{photo['id']}.csv", out_dir / OVERLAYS / f"{photo['id']}.png"
    if not (csv_path.is_file() and png.is_file()):
        return None
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return None
    boxes = [inputs.Box(*(int(r[k]) for k in ("x0", "y0", "x1", "y1"))) for r in rows]
    size = (max(b.x1 for b in boxes), max(b.y1 for b in boxes))
    if is_crack(classes):
        return boxes, np.array([float(r["probability"]) for r in rows]), size
    return boxes, np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows]), size


class _Shard:
    def __init__(self, out_dir: Path, plan: dict, shard_id: str):
        self.out_dir, self.plan, self.shard_id = out_dir, plan, shard_id
        self.settings = Settings(**plan["settings"])
        self.classes = tuple(plan.get("classes") or CLASSES)  # a plan from before N classes: the crack dataset's
        self.stride = self.settings.stride or self.settings.tile
        # position in the plan → (photo, boxes, probabilities, size); of the photos that failed, → (path, reason)
        self.done: dict[int, tuple] = {}
        self.failed: dict[int, tuple[str, str]] = {}
        self.pending: list[tuple] = []
        self.classifier: Classifier | None = None

    def model(self):
        if self.classifier is None:  # loaded only when a photo needs it: a resumed shard may need none
            from .model import load

            self.classifier = load(self.plan["model"], SweepFolder(self.out_dir).cache)
        return self.classifier

    def run(self) -> dict:
        t0 = time.perf_counter()
        order = self.plan["shards"][self.shard_id]
        for k in order:
            photo = self.plan["photos"][k]
            done = _reuse(self.out_dir, photo, self.classes)
            if done:
                self.done[k] = (photo, *done)
                continue
            try:
                image = inputs.open_photo(
                    photo["path"], self.settings.max_megapixels, self.settings.tile, self.model().input_size
                )
            except inputs.PhotoError as exc:
                self.failed[k] = (photo["path"], str(exc))
                continue
            boxes = inputs.grid(image.width, image.height, self.settings.tile, self.stride)
            self.pending.append((k, photo, image, boxes, inputs.patches(image, boxes, self.model().input_size)))
            if sum(len(p[3]) for p in self.pending) >= self.settings.batch:
                self._flush()
        self._flush()
        predictions, summary, errors, n_patches = [], [], [], 0
        for k in order:  # the plan's order, whichever photos were reused, failed or batched
            if k in self.failed:
                errors.append(self.failed[k])
                continue
            photo, boxes, probs, size = self.done[k]
            patches, row = self._rows(photo, boxes, probs, size)
            predictions += [(photo["path"], *p) for p in patches]
            summary.append(list(row.values()))
            n_patches += len(boxes)
        part = self.out_dir / self.shard_id
        prediction_columns, summary_columns = columns(self.classes)
        atomic.write_csv(part / PREDICTIONS, prediction_columns, predictions)
        atomic.write_csv(part / SUMMARY, summary_columns, summary)
        atomic.write_csv(part / ERRORS, ERROR_COLUMNS, errors)
        seconds = time.perf_counter() - t0
        return {
            "photos": len(summary),
            "photo_errors": len(errors),
            "patches": n_patches,
            "seconds": round(seconds, 3),
            "photos_per_s": round(len(summary) / seconds, 3) if seconds else None,
            "device": self.classifier.device if self.classifier else None,
            "precision": self.classifier.precision if self.classifier else None,
        }

    def _rows(self, photo: dict, boxes: list[inputs.Box], probs: np.ndarray, size) -> tuple[list[tuple], dict]:
        """A photo's patch rows (without the photo) and its summary row."""
        files = (f"{MAPS}/{photo['id']}.csv", f"{OVERLAYS}/{photo['id']}.png")
        if not is_crack(self.classes):
            return maps.class_patch_rows(boxes, probs, self.classes), maps.class_summary_row(
                photo["path"], size, probs, self.classes, files
            )
        t = self.settings.threshold
        patches = [(b.x0, b.y0, b.x1, b.y1, f"{p:.6f}", int(p >= t)) for b, p in zip(boxes, probs)]
        return patches, maps.summary_row(photo["path"], size, probs, t, *files)

    def _flush(self) -> None:
        if not self.pending:
            return
        clf = self.model()
        stacked = np.concatenate([p[4] for p in self.pending])
        scores = np.concatenate(
            [clf.scores(stacked[s : s + self.settings.batch]) for s in range(0, len(stacked), self.settings.batch)]
        )
        crack = is_crack(self.classes)
        probs = scores[:, CRACK] if crack else scores
        start = 0
        for k, photo, image, boxes, _ in self.pending:
            mine = probs[start : start + len(boxes)]
            start += len(boxes)
            patches, row = self._rows(photo, boxes, mine, image.size)
            patch_columns = columns(self.classes)[0][1:]  # predictions.csv's, without the photo
            atomic.write_csv(self.out_dir / MAPS / f"{photo['id']}.csv", patch_columns, patches)
            model = Path(self.plan["model"]).name
            if crack:
                title = (
                    f"{Path(photo['path']).name}: {row['cracked_patches']}/{len(boxes)} patches "
                    f"cracked (p >= {self.settings.threshold:g}), max p {mine.max():.2f}; {model}"
                )
                png = maps.overlay(image, boxes, mine, self.settings.threshold, title)
            else:
                title = f"{Path(photo['path']).name}: each patch's top class, mostly {row['top_class']}; {model}"
                png = maps.class_overlay(image, boxes, mine, self.classes, title)
            atomic.write_bytes(self.out_dir / OVERLAYS / f"{photo['id']}.png", png)
            self.done[k] = (photo, boxes, mine, image.size)
        self.pending = []


def run_shard(out_dir: str | Path, shard_id: str) -> dict:
    """Classify one shard's photos; its result.json says completed (with counts), failed (with the
    error) or cancelled."""
    out_dir = Path(out_dir).resolve()
    plan = atomic.read_json(out_dir / PLAN, FIX_PLAN)
    shard_dir = out_dir / shard_id
    # Its own process, as the worker records it: `crackhpc status` tells a local shard that died
    # from one still running, and `crackhpc cancel` stops it.
    rundir.update_result(
        shard_dir, run_id=shard_id, status=RunState.RUNNING, started=rundir.now(), error=None, process=procs.identity()
    )

    def classify() -> dict:
        if rundir.read_config(plan["model"]).train.framework == "torch":
            import torch

            torch.set_num_threads(max(1, plan.get("cpus_per_task") or 1))  # the task's CPUs, as the worker does
        return _Shard(out_dir, plan, shard_id).run()

    return attempt(shard_dir, classify, lambda message: print(f"{shard_id}: {message}", flush=True))


class ShardJob(RecordedJob):
    """What goes out per shard. Requeued at a time limit, it resumes: finished photos are kept."""

    def run(self) -> dict:
        return run_shard(Path(self.folder).parent, Path(self.folder).name)


# -- the whole prediction: plan, submit, wait, merge ------------------------------------------

FIX_KIND = "give --out a new folder for the predictions"


@dataclass(frozen=True)
class Prediction:
    """What `crackhpc predict` is asked for, besides the model."""

    images: tuple[str, ...]
    out: Path
    executor: str = "auto"
    settings: Settings = Settings()
    shards: int | None = None
    per_task: int = 500
    overrides: tuple[str, ...] = ()  # --set resources.KEY=VALUE
    wait: bool | None = None  # None: wait for local jobs, not for Slurm's
    profile: Profile | None = None  # --cluster


def _check_same(out_dir: Path, plan: dict) -> None:
    path = out_dir / PLAN
    if not path.is_file():
        return
    old = atomic.read_json(path, FIX_PLAN)
    changed = [k for k in PLAN_KEYS if old.get(k) != plan.get(k)]
    if changed:
        raise CrackhpcError(
            f"{out_dir}: holds a prediction with other {', '.join(changed)} ({path}); "
            f"give another --out, or delete the folder to start over"
        )


def n_shards_for(n_photos: int, shards: int | None, per_task: int) -> int:
    if shards is not None and shards < 1 or per_task < 1:
        raise CrackhpcError("--shards and --per-task must be at least 1")
    return max(1, min(n_photos, shards if shards is not None else math.ceil(n_photos / per_task)))


def predict(run_dir: Path, ask: Prediction, echo=print) -> int:
    """Plan, submit the shards that need it, wait (unless Slurm without --wait), merge when every
    shard is done. Returns the exit code: 0 all photos done, 1 some photo or shard failed."""
    from ..engine import SUBMIT, Engine, Unit, resolve_executor
    from ..status import run_statuses
    from .model import check_run, classes_of

    ask.settings.check()
    run_dir, spec, _ = check_run(run_dir)
    photos, input_errors = inputs.expand(list(ask.images))
    if not photos:
        raise CrackhpcError(
            "no photos to predict: " + "; ".join(f"{a}: {r}" for a, r in input_errors[:3])
            if input_errors
            else f"no photos ({', '.join(inputs.PHOTO_SUFFIXES)}) in {' '.join(ask.images)}"
        )
    kind = resolve_executor(ask.executor)
    folder = SweepFolder(Path(ask.out).resolve())
    out_dir = folder.path
    resources = prediction_resources(spec.resources, list(ask.overrides), ask.profile)
    n_shards = n_shards_for(len(photos), ask.shards, ask.per_task)
    the_plan = make_plan(run_dir, photos, input_errors, ask.settings, n_shards, resources)
    the_plan["classes"] = list(classes_of(spec))
    shards = list(the_plan["shards"])
    engine = Engine(folder, PREDICTION, kind, echo)
    with engine.locked(FIX_KIND) as record:  # one command at a time submits to the folder, as for a sweep
        _check_same(out_dir, the_plan)
        atomic.write_json(out_dir / PLAN, the_plan)
        record.model, record.current_runs = str(run_dir), shards
        actions = engine.plan(shards, retry_failed=True)  # before this process is the owner
        engine.own()
        todo = [s for s in shards if actions[s] == SUBMIT]
        echo(
            f"predict: {len(photos)} photos with {spec.run_id} ({spec.train.framework} {spec.train.model}, "
            f"{spec.train.input_size} px), {len(shards)} shards, {len(todo)} to submit, executor {kind}, out {out_dir}"
        )
        engine.say_orphans(actions)
        for shard in todo:  # a new attempt: status and cancel read result.json as the latest job's state
            rundir.reset_result(folder.run(shard), run_id=shard, status=RunState.PENDING)
        units = [Unit(s, ShardJob(folder.run(s)), resources, "predict") for s in todo]
        engine.run(units, ask.wait if ask.wait is not None else kind != "slurm")
    # The merged state, as `crackhpc status` shows it: a job Slurm killed (time limit, memory) is
    # not left waiting as "running" when its worker could not record the end.
    states = {r.run_id: r for r in run_statuses(folder, shards, folder.load())}
    failed = [r for r in states.values() if r.state is not RunState.COMPLETED and not r.live]
    for r in failed:
        echo(f"  {r.run_id}: {r.state.value}" + (f": {r.note}" if r.note else ""))
    if any(r.state is not RunState.COMPLETED for r in states.values()):
        if unfinished := sum(r.live for r in states.values()):
            echo(
                f"{unfinished} shard(s) queued or running: `crackhpc status {out_dir}`; run this command again "
                f"to merge once they are done"
            )
        if failed:
            echo(
                f"{len(failed)} shard(s) {'/'.join(sorted({r.state.value for r in failed}))}: "
                f"run this command again to resubmit them"
            )
        return 1 if failed else 0
    n_done, n_errors = merge(out_dir)
    echo(
        f"{n_done} photos done, {n_errors} not ({out_dir / ERRORS}); written: {out_dir / PREDICTIONS}, "
        f"{out_dir / SUMMARY}, {out_dir / INDEX_HTML}"
    )
    return 1 if n_errors else 0


def _read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def merge(out_dir: str | Path) -> tuple[int, int]:
    """The shards' parts → predictions.csv, summary.csv, errors.csv (photo order) and the page of
    overlays, most cracked first. Returns (photos done, photos not)."""
    out_dir = Path(out_dir)
    plan = atomic.read_json(out_dir / PLAN, FIX_PLAN)
    predictions, summary, errors = [], [], []
    for shard in plan["shards"]:
        predictions += _read_rows(out_dir / shard / PREDICTIONS)
        summary += _read_rows(out_dir / shard / SUMMARY)
        errors += _read_rows(out_dir / shard / ERRORS)
    errors += [dict(zip(ERROR_COLUMNS, e)) for e in plan["input_errors"]]
    classes = tuple(plan.get("classes") or CLASSES)
    prediction_columns, summary_columns = columns(classes)
    atomic.write_csv(
        out_dir / PREDICTIONS, prediction_columns, [[r[k] for k in prediction_columns] for r in predictions]
    )
    atomic.write_csv(out_dir / SUMMARY, summary_columns, [[r[k] for k in summary_columns] for r in summary])
    atomic.write_csv(out_dir / ERRORS, ERROR_COLUMNS, [[r[k] for k in ERROR_COLUMNS] for r in errors])
    _write_page(out_dir, plan, summary, errors)
    return len(summary), len(errors)


def _write_page(out_dir: Path, plan: dict, summary: list[dict], errors: list[dict]) -> None:
    """index.md and index.html: the photos' table and overlays; of a model of N classes, each photo's
    patches per top class and its map of the classes."""
    from ..report.document import Document

    classes = tuple(plan.get("classes") or CLASSES)
    settings = plan["settings"]
    patches = f"Patches of {settings['tile']} px every {settings['stride'] or settings['tile']} px"
    if is_crack(classes):
        ranked = sorted(
            summary, key=lambda r: (-float(r["cracked_fraction"]), -float(r["max_probability"]), r["image"])
        )
        title, about = (
            "Crack maps",
            (
                f"{patches}; a patch is cracked where its crack probability is at least {settings['threshold']:g}. "
                f"Most cracked photos first; red outlines mark cracked patches."
            ),
        )
        header = ["photo", "patches", "cracked", "cracked fraction", "max probability"]
        table = [[r["patches"], r["cracked_patches"], r["cracked_fraction"], r["max_probability"]] for r in ranked]
        headings = [f"{r['cracked_patches']}/{r['patches']} patches cracked" for r in ranked]
    else:
        ranked = summary
        title, about = (
            "Class maps",
            (
                f"{patches}, each given its most probable class; the maps colour each part of a photo by the top "
                f"class of the patches over it (legend under each map)."
            ),
        )
        header = ["photo", "patches", "mostly", *classes]
        table = [[r["patches"], r["top_class"], *(r[f"patches_{c}"] for c in classes)] for r in ranked]
        headings = [f"mostly {r['top_class']}" for r in ranked]
    doc = Document()
    doc.heading(1, f"{title}: {len(summary)} photos")
    doc.para(
        f"Model: {plan['model']}" + ("" if is_crack(classes) else f", classes {', '.join(classes)}") + f". {about}"
    )
    doc.table(header, [[Path(r["image"]).name, *cells] for r, cells in zip(ranked, table)])
    for r, heading in zip(ranked, headings):
        doc.heading(2, f"{Path(r['image']).name}: {heading}")
        doc.image(r["image"], r["overlay"])
    if errors:
        doc.heading(2, f"Not processed: {len(errors)}")
        doc.table(["photo", "reason"], [[e["image"], e["reason"]] for e in errors])
    atomic.write_text(out_dir / INDEX_MD, doc.markdown())
    atomic.write_text(out_dir / INDEX_HTML, doc.html("crackhpc predict"))
