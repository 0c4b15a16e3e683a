"""`crackhpc predict` throughput on large synthetic photos: photos/s and patches/s, and where a
photo's time goes (decode + patches, the model, the overlay PNG).

    .venv/bin/python -m benchmarks.predict                          # 20 photos of 2048x1536, 227 px tiles, 224 px ResNet18
    .venv/bin/python -m benchmarks.predict --photos 4 --size 1024x768 --input-size 64   # a quick look

The model is a one-epoch random-init ResNet18 run (the weights do not change the speed); one
process, `--threads` torch threads, the debug executor (no job start-up in the numbers)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml

from crackhpc.data.synth import synthesize_photos
from crackhpc.predict import inputs, maps
from crackhpc.predict.model import load
from crackhpc.predict.shards import Prediction, Settings, predict

CACHE = Path(__file__).parent / "results" / ".cache" / "predict"


def make_run(input_size: int, threads: int) -> Path:
    """A completed one-epoch run at the input size, trained once and then reused."""
    from crackhpc.cli import main

    sweep = {
        "name": f"bench-{input_size}px",
        "executor": "local",
        "data": {"synthetic": {"n": 40, "size": input_size, "seed": 0}, "split": [0.5, 0.25, 0.25]},
        "defaults": {
            "framework": "torch",
            "model": "resnet18",
            "pretrained": False,
            "freeze_backbone": False,
            "epochs": 1,
            "batch_size": 8,
            "input_size": input_size,
        },
        "resources": {"gpus_per_node": 0, "cpus_per_task": threads, "timeout_min": 30},
    }
    path = CACHE / f"{sweep['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(sweep))
    assert main(["sweep", str(path), "--executor", "debug", "--results", str(CACHE / "results")]) == 0
    sweep_dir = CACHE / "results" / sweep["name"]
    return next(p for p in sweep_dir.iterdir() if (p / "config.yaml").is_file())


def stages(run_dir: Path, photos: list[Path], tile: int) -> dict:
    """Milliseconds per photo of each stage, run one after another on the same photos."""
    clf = load(run_dir)
    decode = model = overlay = 0.0
    for path in photos:
        t0 = time.perf_counter()
        image = inputs.open_photo(path, tile=tile, input_size=clf.input_size)
        boxes = inputs.grid(image.width, image.height, tile, tile)
        batch = inputs.patches(image, boxes, clf.input_size)
        t1 = time.perf_counter()
        probs = np.concatenate([clf.probabilities(batch[s : s + 64]) for s in range(0, len(batch), 64)])
        t2 = time.perf_counter()
        maps.overlay(image, boxes, probs, 0.5, path.name)
        t3 = time.perf_counter()
        decode, model, overlay = decode + t1 - t0, model + t2 - t1, overlay + t3 - t2
    n = len(photos)
    return {"decode_patches_ms": 1000 * decode / n, "model_ms": 1000 * model / n, "overlay_ms": 1000 * overlay / n}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=20)
    parser.add_argument("--size", default="2048x1536")
    parser.add_argument("--tile", type=int, default=227)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    folder = CACHE / f"photos-{args.size}"
    synthesize_photos(folder, args.photos, (width, height))
    photos = sorted(folder.glob("photo-*.jpg"))[: args.photos]
    run_dir = make_run(args.input_size, args.threads)
    out = CACHE / f"out-{args.size}-{args.input_size}px"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    t0 = time.perf_counter()
    ask = Prediction(tuple(str(p) for p in photos), out, "debug", Settings(tile=args.tile))
    predict(run_dir, ask, echo=lambda *_: None)
    wall = time.perf_counter() - t0
    shard = json.loads((out / "shard-000" / "result.json").read_text())
    row = {
        "photos": shard["photos"],
        "size": args.size,
        "tile": args.tile,
        "input_px": args.input_size,
        "threads": args.threads,
        "patches": shard["patches"],
        "wall_s": round(wall, 1),
        "photos_per_s": round(shard["photos"] / shard["seconds"], 2),
        "patches_per_s": round(shard["patches"] / shard["seconds"], 1),
        **{k: round(v) for k, v in stages(run_dir, photos, args.tile).items()},
    }
    width_ = max(len(k) for k in row)
    print("\n".join(f"{k:<{width_}}  {v}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
