"""reembed of N images: this tree against another checkout (before a change), interleaved rounds.

    python benchmarks/reembed.py --images 2000 --rounds 3 [--before /path/to/old/checkout] [--vit]

Each round, for each tree, a fresh process ingests the folder with model A (not timed) and
re-embeds it with model B (timed: the reembed call alone). The tiny test models make the model's
share small, so what is measured is staging and finishing; --vit uses the ViT-B-32 architecture
for both (random weights), which adds the model's time to both trees alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, image_folder, table, vit_b_32

from tests.tiny_model import tiny_model_dir, vit_b_32_dir

# Runs as `python -c` in the tree under test (its own folder first on sys.path, nothing of this one):
# ingest with model A (not timed), then time reembed with model B.
WORKER = """
import json, sys, time
import models
from pipeline import Clipdex
from pipeline.config import Settings
from storage import Collection
try:
    from pipeline.maintain.reembed import reembed
except ImportError:  # the layout before pipeline/maintain/
    from pipeline.reembed import reembed
images, model_a, model_b, db = sys.argv[1:5]
Clipdex.open(db, model=model_a, create=True, settings=Settings(workers=2)).ingest([images])
encoder = models.load_encoder(models.EncoderSpec(model=model_b, device="cpu"))
start = time.perf_counter()
report = reembed(Collection.open(db), encoder, workers=2)
seconds = time.perf_counter() - start
after = Collection.open(db)
print(json.dumps({"seconds": seconds, "rows": report.reembedded, "indexed": after.has_index(),
                  "versions": len(after._images.list_versions()), "code": models.__file__}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", help="another checkout of clipdex to compare with")
    parser.add_argument("--vit", action="store_true", help="ViT-B-32 architecture instead of the tiny models")
    args = parser.parse_args()
    work = Path(tempfile.gettempdir()) / "clipdex-bench"
    images = work / "reembed-images"
    image_folder(images, args.images, 0.05)
    if args.vit:
        model_a = vit_b_32(work)
        folder = work / "vit-b-32-other"
        if not (folder / "open_clip_config.json").exists():
            vit_b_32_dir(folder, seed=1)
        model_b = f"local-dir:{folder}"
    else:
        model_a = "local-dir:" + str(tiny_model_dir(work / "tiny-a", seed=0))
        model_b = "local-dir:" + str(tiny_model_dir(work / "tiny-b", seed=1))
    trees = {"this tree": ROOT} | ({"before": Path(args.before).resolve()} if args.before else {})
    best: dict[str, dict[str, object]] = {}
    for round_ in range(args.rounds):
        for name, tree in trees.items():
            with tempfile.TemporaryDirectory(dir=work) as tmp:
                env = os.environ | {"PYTHONPATH": str(tree), "CLIPDEX_WORKERS": "2"}
                out = subprocess.run(
                    [sys.executable, "-c", WORKER, str(images), model_a, model_b, f"{tmp}/db"],
                    env=env, cwd=tree, capture_output=True, text=True, check=True,
                )  # fmt: skip
                result = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"round {round_ + 1} {name}: {result}", file=sys.stderr)
                if name not in best or result["seconds"] < best[name]["seconds"]:  # type: ignore[operator]
                    best[name] = result
    rows = [["tree", "seconds (best)", "rows/s", "table versions", "indexed", "time / this tree"]]
    base = float(best["this tree"]["seconds"])  # type: ignore[arg-type]
    for name, r in best.items():
        seconds = float(r["seconds"])  # type: ignore[arg-type]
        rows.append([name, f"{seconds:.1f}", f"{args.images / seconds:.0f}", str(r["versions"]), str(r["indexed"]),
                     f"{seconds / base:.2f}"])  # fmt: skip
    print(f"reembed of {args.images} images of 0.05 MP, {'ViT-B-32' if args.vit else 'tiny'} models, "
          f"best of {args.rounds} interleaved rounds")  # fmt: skip
    print(table(rows))


if __name__ == "__main__":
    main()
