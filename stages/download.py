"""Stage `download`: fetch and prepare the datasets named in ``data.download`` (toy: generate it).

Writes ``--manifest`` (what was fetched, verified or generated) that later stages depend on.
"""
from __future__ import annotations

import time

from pipeline.config import Params
from pipeline.data.download import prepare_datasets
from pipeline.data.registry import dataset_root
from pipeline.runtime import write_metrics
from stages.common import log, parser, run, tracker


def main(args, params: Params) -> dict:
    root = dataset_root(args.root or params.data.root or None)
    names = args.datasets or list(params.data.download)
    t0 = time.perf_counter()
    summary = prepare_datasets(names, root, params.data.toy, params.backbones.clip.image_size)
    seconds = round(time.perf_counter() - t0, 2)
    summary["root"] = str(root)
    write_metrics(args.manifest, summary)  # deterministic content: downstream stages depend on it
    log.info("datasets ready under %s in %.1f s", root, seconds)
    with tracker(params, "download") as t:
        t.log_metrics({"download_seconds": seconds})
        t.log_artifact(args.manifest)
    return summary


def build_parser():
    ap = parser(__doc__)
    ap.add_argument("--root", default=None, help="dataset root (default: data.root, $DETECTRON2_DATASETS, datasets/)")
    ap.add_argument("--datasets", nargs="*", default=None, help="override data.download")
    ap.add_argument("--manifest", required=True)
    return ap


if __name__ == "__main__":
    run(main, build_parser())
