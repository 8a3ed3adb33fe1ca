"""Stage `download`: fetch and prepare the datasets named in ``data.download`` (toy: generate it).

Writes ``--manifest`` (what was fetched, verified or generated) that later stages depend on.
``--check`` downloads nothing and writes no manifest: it lists each dataset as present / partial / missing,
whether it needs a licence click or login (do those first), and how big the download and the prepared folder are.
"""
from __future__ import annotations

import time
from pathlib import Path

from pipeline.config import Params
from pipeline.data.formats import write_metrics
from pipeline.data.prepare import prepare_datasets
from pipeline.data.registry import dataset_root
from stages.common import log, parser, run, tracker

# Approximate sizes in GB (download archives, disk after extraction + preparation), from the providers' files.
SIZES_GB = {"coco": (19.3, 45.0), "ade20k": (1.1, 4.0), "ade20k_full": (3.9, 9.0), "pascal_context": (1.3, 3.5),
            "mapillary_vistas": (25.0, 30.0), "toy": (0.0, 0.05)}


def check(names: list[str], root) -> list[dict]:
    """What is present, missing and how big, before anything downloads (licence-gated datasets first)."""
    import shutil

    from pipeline.data.prepare import DATASETS

    rows = []
    for name in names:
        spec = DATASETS.get(name)
        expected = spec.expected if spec else ("toy",)
        have = [p for p in expected if (root / p).exists()]
        archives = [s.file for s in spec.sources if (root / "downloads" / s.file).exists()] if spec else []
        status = "present" if len(have) == len(expected) else ("partial" if have or archives else "missing")
        download_gb, disk_gb = SIZES_GB.get(name, (None, None))
        rows.append({"dataset": name, "status": status, "licence_gated": bool(spec and spec.manual),
                     "download_GB": download_gb, "disk_GB": disk_gb,
                     "missing": [str(root / p) for p in expected if p not in have],
                     "action": (spec.manual if spec and spec.manual and status != "present" else "")})
    rows.sort(key=lambda r: (not r["licence_gated"], r["dataset"]))
    need = sum(r["disk_GB"] or 0 for r in rows if r["status"] != "present")
    probe = root if root.exists() else root.parent if root.parent.exists() else Path(".")
    free = shutil.disk_usage(probe).free / 1e9
    print(f"dataset root: {root}  (free: {free:.0f} GB; still needed: about {need:.0f} GB)")
    print(f"{'dataset':<18} {'status':<8} {'licence':<8} {'download':>9} {'on disk':>8}")
    for r in rows:
        print(f"{r['dataset']:<18} {r['status']:<8} {'yes' if r['licence_gated'] else 'no':<8} "
              f"{r['download_GB'] or 0:>7.1f}GB {r['disk_GB'] or 0:>6.1f}GB")
    for r in rows:
        if r["action"]:
            print(f"\n{r['dataset']} (do this first): {r['action']}")
        elif r["status"] != "present":
            print(f"\n{r['dataset']}: missing {', '.join(r['missing'])}; `python -m stages.download --datasets "
                  f"{r['dataset']}` fetches it")
    return rows


def main(args, params: Params) -> dict:
    root = dataset_root(args.root or params.data.root or None)
    names = args.datasets or list(params.data.download)
    if args.check:
        return {"check": check(names, Path(root))}
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
    ap.add_argument("--check", action="store_true", help="list present/missing datasets and sizes; download nothing")
    return ap


if __name__ == "__main__":
    run(main, build_parser())
