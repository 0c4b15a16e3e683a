"""The feature cache: one computation per (model, weights, image size, manifest, precision), shared by
every run and every process that asks for it, and never visible half written."""

import copy
import io
import multiprocessing as mp
import os
import time

import numpy as np
import pytest
import torch

from crackhpc.data.images import ImageCache
from crackhpc.data.split import make_manifest, manifest_hash
from crackhpc.worker.features import FeatureKey, cached_features
from crackhpc.worker.torch_models import build, extract

SPLIT = (0.5, 0.25, 0.25)


@pytest.fixture
def base(tiny_data):
    return {
        "model": "resnet18",
        "weights_id": "random-seed0",
        "input_size": 32,
        "manifest": manifest_hash(make_manifest(tiny_data, SPLIT, 0)),
        "precision": "None",
    }


def key_name(manifest: str, **key) -> str:
    return FeatureKey(**key).name(manifest)


def counted(calls: list, value: float):
    def compute():
        calls.append(value)
        return np.full((4, 8), value, np.float32)

    return compute


def test_same_inputs_reuse_the_features(tmp_path, base):
    calls = []
    first, computed = cached_features(tmp_path, key_name(**base), counted(calls, 1.0))
    assert computed and calls == [1.0]
    again, computed = cached_features(tmp_path, key_name(**base), counted(calls, 2.0))
    assert not computed and calls == [1.0]
    np.testing.assert_array_equal(again, first)


@pytest.mark.parametrize(
    "field, value",
    [
        ("model", "resnet50"),
        ("weights_id", "random-seed1"),
        ("weights_id", "f37072fd"),
        ("input_size", 64),
        ("precision", "torch.bfloat16"),
    ],
)
def test_a_changed_input_recomputes(tmp_path, base, field, value):
    calls = []
    cached_features(tmp_path, key_name(**base), counted(calls, 1.0))
    feats, computed = cached_features(tmp_path, key_name(**{**base, field: value}), counted(calls, 2.0))
    assert computed and calls == [1.0, 2.0] and (feats == 2.0).all()


@pytest.mark.parametrize(
    "manifest",
    [
        lambda root: make_manifest(root, SPLIT, 1),  # the same images, split differently
        lambda root: make_manifest(root, SPLIT, 0)[:-1],  # one image fewer
        lambda root: make_manifest(root, (0.6, 0.2, 0.2), 0),  # other fractions
    ],
)
def test_a_changed_split_manifest_recomputes(tmp_path, tiny_data, base, manifest):
    calls = []
    cached_features(tmp_path, key_name(**base), counted(calls, 1.0))
    changed = {**base, "manifest": manifest_hash(manifest(tiny_data))}
    _, computed = cached_features(tmp_path, key_name(**changed), counted(calls, 2.0))
    assert computed and calls == [1.0, 2.0]


@pytest.mark.parametrize("model", ["resnet18", "vgg16"])
def test_extracted_features_are_the_eval_mode_backbone_outputs(tmp_path, tiny_data, model):
    items = make_manifest(tiny_data, SPLIT, 0)
    cache = ImageCache.build(items, tiny_data, 32, tmp_path)
    torch.manual_seed(0)
    backbone, _, _ = build(model, pretrained=False)
    with torch.no_grad():
        expected = copy.deepcopy(backbone).eval()(torch.from_numpy(np.array(cache.images[:12]))).numpy()
    feats = extract(backbone, cache.images, torch.device("cpu"), batch=8)
    assert feats.shape == (40, expected.shape[1])
    np.testing.assert_allclose(feats[:12], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


# -- two processes, one key ------------------------------------------------------------------
ROWS = 8192  # 16 MB: long enough to write that a file written in place would be seen half done


def _features() -> np.ndarray:
    return np.arange(ROWS * 512, dtype=np.float32).reshape(ROWS, 512)


def _ask(cache_dir, key, marker, barrier, results):
    def compute():
        with open(marker, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # the other process reaches the lock meanwhile
        return _features()

    barrier.wait()
    feats, computed = cached_features(cache_dir, key, compute)
    results.put((computed, bool(np.array_equal(feats, _features()))))


def test_two_processes_compute_once_and_both_read_it_whole(tmp_path, base):
    ctx = mp.get_context("spawn")
    key, marker = key_name(**base), tmp_path / "computed-by"
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_ask, args=(tmp_path / "cache", key, marker, barrier, results)) for _ in range(2)]
    final = tmp_path / "cache" / f"{key}.npy"
    buf = io.BytesIO()
    np.save(buf, _features())
    sizes_seen = set()
    for p in procs:
        p.start()
    while any(p.is_alive() for p in procs):
        try:
            sizes_seen.add(final.stat().st_size)
        except FileNotFoundError:
            pass
        time.sleep(0.0005)
    sizes_seen.add(final.stat().st_size)
    outcomes = sorted(results.get(timeout=10) for _ in procs)
    assert all(p.exitcode == 0 for p in procs)
    assert outcomes == [(False, True), (True, True)]
    assert len(marker.read_text().splitlines()) == 1
    assert sizes_seen == {buf.getbuffer().nbytes}  # the final name only ever held the whole file
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [f"{key}.lock", f"{key}.npy"]
