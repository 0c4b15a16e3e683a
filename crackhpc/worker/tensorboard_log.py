"""A run's TensorBoard events, written by rank 0 beside metrics.csv: `<run folder>/tensorboard/`
holds the per-epoch scalars (the columns of metrics.csv and the learning rate) and an HParams
record (the settings that vary in the sweep, then the best validation accuracy, test accuracy and
test loss), so that `tensorboard --logdir results/<sweep>` shows every run of the sweep, one
TensorBoard run per run folder, and its HParams dashboard compares them.

The same for the torch and the Keras worker, and framework-free: it uses the `tensorboard`
package's protocol buffers and record framing only. TensorBoard's own event writer (and torch's
SummaryWriter) go through `tensorboard.compat.tf`, which imports TensorFlow where it is installed,
and a torch run must not load TensorFlow. Without the `tensorboard` package a run trains as before
and says once that it writes no events.

Requeue and resume: a run's epochs are those its checkpoint holds. Each attempt writes them into a
new event file (with the wall times earlier attempts recorded for them), deletes the earlier
attempts' files, then appends each epoch it trains. An epoch an interrupted attempt wrote after its
last checkpoint is trained again and shown once; none is lost.
"""

from __future__ import annotations

import io
import os
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .. import atomic, rundir
from ..config import RunSpec

EVENTS = "events.out.tfevents.*"
# Scalars written once, at the last epoch, when the run completes: what the HParams dashboard compares.
FINAL = ("best_val_acc", "test_acc", "test_loss")
LEARNING_RATE = "lr"


def protos() -> SimpleNamespace:
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    return SimpleNamespace(
        event=event_pb2, summary=summary_pb2, api=api_pb2, meta=metadata, plugin=plugin_data_pb2, Writer=RecordWriter
    )


def hparams(spec: RunSpec) -> dict[str, bool | float | int | str]:
    """Framework and model, then the settings that vary between the sweep's runs (unset ones left out)."""
    keys = dict.fromkeys(("framework", "model", *spec.varying))
    values = {k: getattr(spec.train, k, None) for k in keys}
    return {k: v for k, v in values.items() if isinstance(v, (bool, int, float, str))}


def _read_events(path: Path, event_pb2) -> Iterator[Any]:
    """The events of a file, up to the first incomplete or unreadable record (a killed writer's tail)."""
    try:
        data = path.read_bytes()
    except OSError:
        return
    pos = 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        end = pos + 12 + length + 4
        if end > len(data):
            return
        event = event_pb2.Event()
        try:
            event.ParseFromString(data[pos + 12 : pos + 12 + length])
        except Exception:  # protobuf's DecodeError: a damaged record
            return
        yield event
        pos = end


class EventLog:
    """The event file of this attempt; `start` makes it."""

    def __init__(self, path: Path, pb: SimpleNamespace, fh) -> None:
        self.path, self.pb, self.fh = path, pb, fh
        self.writer = pb.Writer(fh)

    @classmethod
    def start(cls, run_dir: Path, spec: RunSpec, rows: Sequence[rundir.Epoch], lr: float, log) -> EventLog | None:
        """A new event file holding the HParams record and the resumed `rows`, the earlier
        attempts' files deleted; None (and a line in the log) without the tensorboard package."""
        try:
            pb = protos()
        except Exception as exc:  # not installed, or a protobuf it cannot load: training goes on
            log(f"no TensorBoard events ({type(exc).__name__}: {exc}); pip install 'crackhpc[tracking]' for them")
            return None
        folder = run_dir / rundir.TENSORBOARD
        folder.mkdir(parents=True, exist_ok=True)
        atomic.remove_stale(folder)
        earlier = sorted(folder.glob(EVENTS))
        walls: dict[int, float] = {}
        started = None
        for path in earlier:
            for event in _read_events(path, pb.event):
                for value in event.summary.value:
                    if value.tag == pb.meta.SESSION_START_INFO_TAG:
                        started = started or event.wall_time
                    elif value.tag in rundir.METRIC_COLUMNS:
                        walls.setdefault(event.step, event.wall_time)
        now = time.time()
        path = folder / f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}.crackhpc"
        buf = io.BytesIO()
        head = cls(path, pb, buf)
        head._event(pb.event.Event(wall_time=now, file_version="brain.Event:2"))
        head._session_start(hparams(spec), spec.run_id, started or now)
        for row in rows:
            head._epoch(row, lr, walls.get(row.epoch, now))
        atomic.write_bytes(path, buf.getvalue())
        for old in earlier:
            if old != path:
                old.unlink(missing_ok=True)
        return cls(path, pb, open(path, "ab"))  # appended to by epoch(), closed by end()

    def _event(self, event) -> None:
        self.writer.write(event.SerializeToString())

    def _summary(self, step: int, wall_time: float, values) -> None:
        self._event(self.pb.event.Event(wall_time=wall_time, step=step, summary=self.pb.summary.Summary(value=values)))

    def _plugin(self, tag: str, data, wall_time: float) -> None:
        """An HParams plugin record (session start or end) at step 0."""
        value = self.pb.summary.Summary.Value(
            tag=tag, metadata=self.pb.meta.create_summary_metadata(data), tensor=self.pb.meta.NULL_TENSOR
        )
        self._summary(0, wall_time, [value])

    def _session_start(self, values: dict, group: str, start_time: float) -> None:
        info = self.pb.plugin.SessionStartInfo(group_name=group, start_time_secs=start_time)
        for name, value in values.items():
            if isinstance(value, bool):
                info.hparams[name].bool_value = value
            elif isinstance(value, str):
                info.hparams[name].string_value = value
            else:
                info.hparams[name].number_value = value
        self._plugin(
            self.pb.meta.SESSION_START_INFO_TAG, self.pb.plugin.HParamsPluginData(session_start_info=info), start_time
        )

    def _scalars(self, step: int, values: dict[str, float], wall_time: float) -> None:
        self._summary(
            step, wall_time, [self.pb.summary.Summary.Value(tag=k, simple_value=v) for k, v in values.items()]
        )

    def _flush(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())  # a TensorBoard on the login node reads it over the shared file system

    def _epoch(self, row: rundir.Epoch, lr: float, wall_time: float) -> None:
        values = {k: float(v) for k, v in row._asdict().items() if k != "epoch"}
        self._scalars(row.epoch, {**values, LEARNING_RATE: lr}, wall_time)

    def epoch(self, row: rundir.Epoch, lr: float) -> None:
        """One epoch's scalars at step = its number, on disk when this returns."""
        self._epoch(row, lr, time.time())
        self._flush()

    def end(self, last_epoch: int, final: dict[str, float] | None) -> None:
        """The run's final scalars and a successful end, or (`final` None) a failed end; then closed."""
        now = time.time()
        if final is not None:
            self._scalars(last_epoch, final, now)
        status = self.pb.api.STATUS_SUCCESS if final is not None else self.pb.api.STATUS_FAILURE
        info = self.pb.plugin.SessionEndInfo(status=status, end_time_secs=now)
        self._plugin(self.pb.meta.SESSION_END_INFO_TAG, self.pb.plugin.HParamsPluginData(session_end_info=info), now)
        self._flush()
        self.fh.close()
