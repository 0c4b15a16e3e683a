"""The workers' TensorBoard events (crackhpc/worker/tensorboard_log.py), read back with TensorBoard's
EventAccumulator: per-epoch scalars equal to metrics.csv, the HParams record, resume without a
step shown twice or lost, and no framework loaded by the writer."""

import subprocess
import sys

from crackhpc import rundir
from crackhpc.config import load_sweep
from crackhpc.grid import expand
from crackhpc.launcher import write_run_folders
from crackhpc.record import SweepFolder
from crackhpc.worker import run
from crackhpc.worker.tensorboard_log import EventLog, protos

from .conftest import assert_events_match_metrics, event_accumulator, tiny_sweep


def hparams_record(run_dir):
    """(the hparams of the session start, the session's end status) of a run's events."""
    from tensorboard.plugins.hparams import api_pb2, metadata

    events = event_accumulator(run_dir / rundir.TENSORBOARD)
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    hparams = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    return hparams, api_pb2.Status.Name(end.status)


def test_each_run_folder_has_its_scalars_and_hparams(tracked):
    runs = sorted(p for p in tracked.iterdir() if (p / rundir.CONFIG).is_file())
    assert len(runs) == 2
    for run_dir in runs:
        lr = rundir.read_config(run_dir).train.lr
        assert_events_match_metrics(run_dir, lr)
        # one TensorBoard run per run folder: no sub-run folders under tensorboard/
        assert [p.name for p in (run_dir / rundir.TENSORBOARD).iterdir() if p.is_dir()] == []
        # the settings that vary in the sweep, besides framework and model
        assert hparams_record(run_dir) == ({"framework": "torch", "model": "resnet18", "lr": lr}, "STATUS_SUCCESS")


def test_a_resumed_run_shows_each_epoch_once(tmp_path, write_yaml, tiny_data):
    """An attempt killed after writing epoch 2's events but before its checkpoint: the next attempt
    resumes after epoch 1 and trains epoch 2 again, which TensorBoard shows once, with its new values."""
    sweep = load_sweep(write_yaml(tiny_sweep(tiny_data, defaults={"epochs": 1})))
    (spec,) = write_run_folders(expand(sweep), SweepFolder(tmp_path / sweep.name), tiny_data, sweep)
    run_dir = tmp_path / sweep.name / spec.run_id
    run(run_dir)
    (events_file,) = (run_dir / rundir.TENSORBOARD).glob("events.out.tfevents.*")
    before = events_file.read_bytes()
    # what the killed attempt wrote: epoch 2's scalars (and nothing after), in the events only
    with open(events_file, "ab") as fh:
        EventLog(events_file, protos(), fh).epoch(rundir.Epoch(2, 9.0, 0.0, 9.0, 0.0, 1.0, 1.0), 0.5)
    assert len(events_file.read_bytes()) > len(before)
    config = (run_dir / rundir.CONFIG).read_text()
    (run_dir / rundir.CONFIG).write_text(config.replace("epochs: 1", "epochs: 3"))
    run(run_dir)
    assert "resumed from checkpoint.pt after epoch 1" in (run_dir / rundir.LOG).read_text()
    assert_events_match_metrics(run_dir, spec.train.lr)  # one file: this attempt's, epoch 2 with its new values
    assert [e.step for e in event_accumulator(run_dir / rundir.TENSORBOARD).Scalars("train_loss")] == [1, 2, 3]


def test_the_writer_loads_no_framework(tmp_path, write_yaml, tiny_data):
    """A torch run must not load TensorFlow, nor a Keras run torch: the writer needs neither."""
    sweep = load_sweep(write_yaml(tiny_sweep(tiny_data)))
    (spec,) = write_run_folders(expand(sweep), SweepFolder(tmp_path / sweep.name), tiny_data, sweep)
    code = (
        "import sys; from pathlib import Path; from crackhpc import rundir; "
        "from crackhpc.worker.tensorboard_log import EventLog; "
        "log = EventLog.start(Path(sys.argv[1]), rundir.read_config(sys.argv[1]), [], 0.1, print); "
        "log.end(0, {'test_acc': 0.5}); "
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'torch', 'keras')); "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / sweep.name / spec.run_id)], check=True)
    events = event_accumulator(tmp_path / sweep.name / spec.run_id / rundir.TENSORBOARD)
    assert [(e.step, e.value) for e in events.Scalars("test_acc")] == [(0, 0.5)]
