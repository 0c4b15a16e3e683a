"""`crackhpc predict`: a trained run applied to new photos.

A photo larger than the training crops becomes a grid of crop-size patches, each classified;
the output folder holds, per photo, a CSV of patch boxes with their crack probability (a model of
N classes: each patch's top class and every class's probability) and an overlay PNG, and for all photos one predictions.csv, summary.csv, errors.csv and a page of the
overlays. Photos are split into shards that run as one job array, like a sweep's runs:

    <out>/
        predict.json        the plan: model run, settings, its classes, every photo with its shard
        sweep.json          the shards' jobs, in a sweep folder's format (`crackhpc status`/`cancel`)
        shard-000/          result.json (status) and the shard's parts of the three CSVs
        maps/<photo>.csv    patch boxes and crack probabilities (or classes)
        overlays/<photo>.png
        predictions.csv  summary.csv  errors.csv  index.md  index.html   (merged when all shards are done)

Modules: inputs (photo lists, decoding, tiling), model (which run, loading it), maps (per-photo
outputs), shards (plan, jobs, merge). Frameworks are imported only where a model is loaded.
"""
