"""The benchmarks' datasets: where each comes from (or what to do by hand for the licence-gated ones), fetching
and extracting its archives and running its conversion into the detectron2 layout under ``$DETECTRON2_DATASETS``
(:mod:`pipeline.data.conversions`, :mod:`pipeline.data.coco_stuff`), and the toy world's generation.

A dataset whose detectron2 layout is already there for every benchmark it provides is verified in place
(:mod:`pipeline.data.verify`) and recorded as ``"source": "prepared"``: nothing is downloaded or converted, and
licence-gated datasets need no raw archive. Only an absent layout is fetched and prepared. A partial one (some
files missing) is completed only when that needs no download (its raw files are here, or an earlier run of this
stage started fetching it), or when asked (``--fetch-missing``, which skips every archive whose files are
present); otherwise the stage stops naming the missing files and the command.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline.data.archives import safe_extract
from pipeline.data.coco_stuff import prepare_coco_stuff
from pipeline.data.conversions import prepare_ade20k, prepare_ade20k_full, prepare_coco, prepare_pascal_context
from pipeline.data.download import LOCK_FILE, DownloadLock, fetch_verified, sha256_of
from pipeline.data.formats import DatasetError, permission_guard

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- dataset registry
@dataclass(frozen=True)
class Source:
    url: str
    file: str  # archive name under <root>/downloads
    extract_to: str = ""  # relative to root
    provides: tuple[str, ...] = ()  # paths (relative to root) it yields: when all exist it is not fetched again


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    sources: tuple[Source, ...] = ()
    manual: str = ""  # instructions when a licence click or login is needed
    expected: tuple[str, ...] = ()  # paths that must exist (relative to root) after fetch/manual placement
    prepare: Callable[[Path], dict] | None = field(default=None, compare=False)


def pinned_checksums() -> dict[str, str | None]:
    path = Path(__file__).parent / "checksums" / "datasets.json"
    return json.loads(path.read_text())


COCO_TRAIN, COCO_VAL = ("coco/train2017",), ("coco/val2017",)  # what the COCO image archives yield
DATASETS: dict[str, DatasetSpec] = {
    "coco": DatasetSpec("coco", (
        Source("https://images.cocodataset.org/zips/train2017.zip", "coco_train2017.zip", "coco", COCO_TRAIN),
        Source("https://images.cocodataset.org/zips/val2017.zip", "coco_val2017.zip", "coco", COCO_VAL),
        Source("https://images.cocodataset.org/annotations/panoptic_annotations_trainval2017.zip",
               "coco_panoptic_annotations_trainval2017.zip", "coco",
               ("coco/annotations/panoptic_train2017.json", "coco/annotations/panoptic_val2017.json",
                "coco/panoptic_train2017", "coco/panoptic_val2017")),
    ), expected=("coco/val2017", "coco/annotations/panoptic_val2017.json"), prepare=prepare_coco),
    "coco_stuff": DatasetSpec("coco_stuff", (  # Table III: COCO images + COCO-Stuff-164k stuffthingmaps
        Source("https://images.cocodataset.org/zips/train2017.zip", "coco_train2017.zip", "coco", COCO_TRAIN),
        Source("https://images.cocodataset.org/zips/val2017.zip", "coco_val2017.zip", "coco", COCO_VAL),
        Source("https://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/stuffthingmaps_trainval2017.zip",
               "stuffthingmaps_trainval2017.zip", "coco/stuffthingmaps",
               ("coco/stuffthingmaps/train2017", "coco/stuffthingmaps/val2017")),
    ), expected=("coco/val2017", "coco/stuffthingmaps/val2017"), prepare=prepare_coco_stuff),
    "ade20k": DatasetSpec("ade20k", (
        Source("https://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip", "ADEChallengeData2016.zip",
               provides=("ADEChallengeData2016/images/validation", "ADEChallengeData2016/annotations/validation")),
        Source("https://sceneparsing.csail.mit.edu/data/ChallengeData2017/annotations_instance.tar",
               "ade20k_annotations_instance.tar", "ADEChallengeData2016",
               ("ADEChallengeData2016/annotations_instance/validation",)),
    ), expected=("ADEChallengeData2016/images/validation",), prepare=prepare_ade20k),
    "ade20k_full": DatasetSpec("ade20k_full", manual=(
        "ADE20K-full needs a free account: register at https://groups.csail.mit.edu/vision/datasets/ADE20K/, "
        "download ADE20K_2021_17_01.zip and unzip it so that <root>/ADE20K_2021_17_01/images/ADE/validation "
        "exists, then re-run this stage to convert it."),
        expected=("ADE20K_2021_17_01/images/ADE/validation",), prepare=prepare_ade20k_full),
    "pascal_context": DatasetSpec("pascal_context", (
        Source("https://thor.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar",  # torchvision's mirror
               "VOCtrainval_2010.tar", provides=("VOCdevkit/VOC2010/JPEGImages",)),
    ), manual=(
        "Pascal Context's 459-class annotations are distributed by the dataset authors "
        "(https://cs.stanford.edu/~roozbeh/pascal-context/): accept their terms, download trainval.tar.gz and "
        "extract it to <root>/VOCdevkit/VOC2010/pascal_context/trainval/*.mat, with train.txt and val.txt "
        "beside it, then re-run this stage."),
        expected=("VOCdevkit/VOC2010/JPEGImages", "VOCdevkit/VOC2010/pascal_context/trainval"),
        prepare=prepare_pascal_context),
    "mapillary_vistas": DatasetSpec("mapillary_vistas", manual=(
        "Mapillary Vistas v1.2 needs a login: request it at https://www.mapillary.com/dataset/vistas, unzip it to "
        "<root>/mapillary_vistas so that validation/images, validation/panoptic/panoptic_2018.json and "
        "validation/labels exist, then re-run this stage to verify it."),
        expected=("mapillary_vistas/validation/images", "mapillary_vistas/validation/panoptic/panoptic_2018.json",
                  "mapillary_vistas/validation/labels")),
}


# ----------------------------------------------------------------------------- fetching and preparation
def _marker(src: Source, root: Path) -> Path:
    return root / "downloads" / f".{src.file}.extracted"


def _files_present(src: Source, root: Path) -> bool:
    """Whether what ``src`` yields is here already (extracted earlier or placed by hand) and its extraction, if
    this stage started one, finished: then it is neither fetched nor extracted again."""
    if not src.provides or not all((root / p).exists() for p in src.provides):
        return False
    return not (root / "downloads" / src.file).exists() or _marker(src, root).exists()


def pending_downloads(spec: DatasetSpec, root: Path) -> list[str]:
    """The archives of ``spec`` that fetching it now would download (not under <root>/downloads, files absent)."""
    return [s.file for s in spec.sources
            if not _files_present(s, root) and not (root / "downloads" / s.file).is_file()]


def fetch_started(spec: DatasetSpec, root: Path) -> bool:
    """Whether an earlier run of this stage began fetching ``spec`` (an archive, a ``.part`` or a marker)."""
    dl = root / "downloads"
    return any((dl / s.file).exists() or (dl / f"{s.file}.part").exists() or _marker(s, root).exists()
               for s in spec.sources)


def source_trust(spec: DatasetSpec, root: Path, checksums: dict[str, str | None]) -> list[dict]:
    """How each archive of ``spec`` is (or will be) verified: its published sha256, or trust on first use (TOFU):
    the sha256 of its first download recorded in ``<root>/.fovseg-downloads.lock.json`` and trusted, every later
    download checked against it."""
    lock = DownloadLock(root / LOCK_FILE)
    rows = []
    for src in spec.sources:
        entry = lock.get(src.file)
        if checksums.get(src.file):
            how, note = "published sha256", "checked against its published sha256 (pipeline/data/checksums)"
        elif entry:
            how, note = "tofu-recorded", (f"TOFU: no published sha256; recorded in the lock file at its first "
                                          f"download (sha256 {entry['sha256'][:12]}...) and trusted, every later "
                                          "download is checked against it")
        else:
            how, note = "tofu-first-download", ("TOFU: no published sha256; its first download's sha256 will be "
                                                "recorded in the lock file and trusted, every later download is "
                                                "checked against it")
        rows.append({"file": src.file, "url": src.url, "verified_by": how, "note": note,
                     "lock_file": str(root / LOCK_FILE)})
    return rows


NOT_FETCHED = "not fetched: its files are present"


def fetch_dataset(spec: DatasetSpec, root: Path, checksums: dict[str, str | None]) -> dict:
    """Fetch (resumable, verified) and extract every archive of ``spec`` whose files are not here yet, check its
    ``expected`` paths, then run its preparation step."""
    lock = DownloadLock(root / LOCK_FILE)
    files: dict[str, dict] = {}
    for src in spec.sources:
        if _files_present(src, root):
            files[src.file] = {"url": src.url, "verified": NOT_FETCHED}
            continue
        archive, how = fetch_verified(src.url, root / "downloads" / src.file, checksums.get(src.file), lock)
        files[src.file] = {"url": src.url, "verified": how}
        marker = _marker(src, root)
        if not marker.exists():
            safe_extract(archive, root / src.extract_to if src.extract_to else root)
            marker.write_text(sha256_of(archive))
    missing = [p for p in spec.expected if not (root / p).exists()]
    if missing:
        raise DatasetError(f"{spec.name}: missing {[str(root / p) for p in missing]}. {spec.manual}".strip())
    result = spec.prepare(root) if spec.prepare else {}
    unpinned = [s.file for s in spec.sources if not checksums.get(s.file)]
    return {"dataset": spec.name, "verified_checksums": not unpinned, "unpinned": unpinned, "files": files,
            "lock_file": str(root / LOCK_FILE), **result}


def completion_hint(spec: DatasetSpec, root: Path) -> str:
    """What completes a partial prepared layout of ``spec``: the command (and the archives it would download),
    or the manual steps of a licence-gated dataset."""
    command = f"python -m stages.download --datasets {spec.name}"
    if fetch_started(spec, root):
        return f"`{command}` resumes the fetch and preparation an earlier run started"
    archives = pending_downloads(spec, root)
    if spec.sources and archives:
        return (f"Put the missing files there, or run `{command} --fetch-missing`: it downloads {', '.join(archives)} "
                "(archives whose files are present are skipped) and prepares the missing files")
    if spec.sources or (spec.prepare and all((root / p).exists() for p in spec.expected)):
        return f"`{command}` prepares them from the raw files already there (no download)"
    return f"Put the missing files there; {spec.manual}" if spec.manual else "Put the missing files there"


def can_complete(spec: DatasetSpec, root: Path) -> bool:
    """A partial layout is completed without asking when that downloads nothing (its raw files are here) or an
    earlier run of this stage started fetching it."""
    if fetch_started(spec, root):
        return True
    if spec.sources:
        return not pending_downloads(spec, root)
    return spec.prepare is not None and all((root / p).exists() for p in spec.expected)


def obtain_dataset(spec: DatasetSpec, root: Path, checksums: dict[str, str | None], fetch_missing: bool = False
                   ) -> dict:
    """Verify ``spec``'s prepared layout and keep it as it is; otherwise fetch and prepare it (see the module
    docstring for a partial layout). The manifest entry lists each benchmark's counts."""
    from pipeline.data.verify import describe_problems, verify_dataset

    reports = verify_dataset(spec.name, root)
    if reports and all(r.status == "present" for r in reports):
        log.info("%s: prepared layout verified under %s (nothing downloaded)", spec.name, root)
        return {"dataset": spec.name, "source": "prepared",
                "benchmarks": {r.benchmark: r.manifest() for r in reports}}
    partial = any(r.status != "missing" for r in reports)
    if partial and not fetch_missing and not can_complete(spec, root):
        raise DatasetError(f"{spec.name}: the prepared layout under {root} is incomplete: {describe_problems(reports)}"
                           f". {completion_hint(spec, root)}")
    result = fetch_dataset(spec, root, checksums)
    reports = verify_dataset(spec.name, root)
    if any(r.status != "present" for r in reports):
        raise DatasetError(f"{spec.name}: after fetching and preparing, {describe_problems(reports)}; check the files "
                           f"under {root} (a damaged archive: delete it under {root / 'downloads'} and re-run)")
    fetched = any(f["verified"] != NOT_FETCHED for f in result["files"].values())
    return {**result, "source": "fetched" if fetched else "converted from the raw files already there",
            "benchmarks": {r.benchmark: r.manifest() for r in reports}}


def prepare_datasets(names: list[str], root: Path, toy_params, caption_size: int, fetch_missing: bool = False
                     ) -> dict:
    """Verify, or fetch and prepare, each named dataset under ``root`` (:func:`obtain_dataset`); 'toy' generates
    the shapes world. ``fetch_missing``: download what a partial prepared layout lacks. A permission problem met
    anywhere on the way is one "permission denied: <path>" error."""
    from pipeline.data.toy import generate_toy_world

    out: dict = {"datasets": {}}
    checksums = pinned_checksums()
    for name in names:
        if name not in DATASETS and name != "toy":
            raise DatasetError(f"unknown dataset {name!r}; valid: toy, {', '.join(DATASETS)}")
        with permission_guard(root):
            if name == "toy":
                out["datasets"]["toy"] = manifest = generate_toy_world(
                    root, seed=toy_params.seed, image_size=toy_params.image_size, n_train=toy_params.n_train,
                    n_val=toy_params.n_val, n_open=toy_params.n_open, n_captions=toy_params.n_captions,
                    caption_size=caption_size, max_things=toy_params.max_things)
                log.info("toy world generated in %.1f s", manifest.pop("seconds"))
            else:
                out["datasets"][name] = obtain_dataset(DATASETS[name], Path(root), checksums, fetch_missing)
    return out
