"""Clusters of the collection (spherical k-means on the image vectors), named by their best words,
and a 2-D map of it (a PCA projection) as one self-contained HTML page with thumbnails."""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from models import Encoder
from pipeline.errors import BadOption, NothingToDo
from pipeline.ingest.decode import thumbnail_image

if TYPE_CHECKING:
    from collections.abc import Callable

    from storage import Collection

# Words that name what photo libraries hold; a cluster is named by the three closest to its centre.
VOCABULARY = tuple(
    """beach sea lake river mountain forest snow desert city street night sunset sky clouds garden
    flowers tree field road bridge building house interior kitchen bedroom office restaurant party
    wedding concert sport football portrait selfie baby child family group crowd dog cat bird horse
    animal fish food cake drink car bicycle train airplane boat text document screenshot drawing
    painting map art museum church castle ruins park playground pool boat harbour island waterfall
    cave rock autumn winter spring summer rain fog christmas birthday graduation holiday travel
    hiking camping skiing swimming running cycling music guitar piano book computer phone toy game
    fashion shoes dress face hands eyes smile macro insect butterfly night sky stars moon fireworks
    architecture window door stairs""".split()  # noqa: SIM905 - a word list reads better as text
)
SAMPLE = 2000  # vectors used to choose k automatically
MAX_AUTO_K = 30


@dataclass(frozen=True)
class Cluster:
    """One cluster: its number, its name from the vocabulary, and how many images it holds."""

    number: int
    name: str
    size: int


@dataclass(frozen=True)
class KChoice:
    """How --auto chose k: the cosine silhouette of each k tried, on a sample of SAMPLE vectors."""

    k: int
    silhouettes: tuple[tuple[int, float], ...]  # (k, silhouette), in the order tried
    sample: int

    @property
    def ranked(self) -> list[tuple[int, float]]:
        """The k tried, best silhouette first."""
        return sorted(self.silhouettes, key=lambda ks: -ks[1])


def cluster(
    collection: Collection,
    encoder: Encoder,
    k: int | None = None,
    *,
    seed: int = 0,
    store: bool = True,
    chose: Callable[[KChoice], None] | None = None,
) -> list[Cluster]:
    """k-means on the image vectors (k=None: chosen by silhouette, told to chose); stores `cluster`
    and `cluster_name`."""
    ids, vectors = collection.vectors()
    if len(ids) < 2:
        raise NothingToDo("clustering needs at least two images; ingest some first")
    rng = np.random.default_rng(seed)
    if k is None:
        choice = choose_k_by_silhouette(vectors, rng)
        if chose is not None:
            chose(choice)
        k = choice.k
    if not 2 <= k <= len(ids):
        raise BadOption(f"-k {k}: choose between 2 and the number of images ({len(ids)}), or --auto")
    centres, labels = kmeans(vectors, k, rng)
    words = encoder.embed_texts([f"a photo of {w}" for w in VOCABULARY])
    names = [", ".join(VOCABULARY[j] for j in np.argsort(-(words @ c))[:3]) for c in centres]
    sizes = np.bincount(labels, minlength=k)
    if store:
        with collection.writer("cluster"):
            collection.set_columns(
                {
                    "cluster": ({i: int(c) for i, c in zip(ids, labels, strict=True)}, "int32"),
                    "cluster_name": ({i: names[int(c)] for i, c in zip(ids, labels, strict=True)}, "string"),
                }
            )
    return [Cluster(int(n), names[n], int(sizes[n])) for n in np.argsort(-sizes)]


def kmeans(vectors: np.ndarray, k: int, rng: np.random.Generator, rounds: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means with k-means++ seeding: unit centres, cosine assignment."""
    centres = [vectors[rng.integers(len(vectors))]]
    for _ in range(1, k):
        distance = np.clip(1 - np.max(vectors @ np.stack(centres).T, axis=1), 0, None)
        total = distance.sum()
        pick = rng.choice(len(vectors), p=distance / total) if total > 0 else rng.integers(len(vectors))
        centres.append(vectors[pick])
    matrix = np.stack(centres)
    labels = np.zeros(len(vectors), np.int64)
    for _ in range(rounds):
        new = np.argmax(vectors @ matrix.T, axis=1)
        if _ > 0 and np.array_equal(new, labels):
            break
        labels = new
        for c in range(k):
            members = vectors[labels == c]
            if len(members):
                mean = members.sum(axis=0)
                matrix[c] = mean / max(float(np.linalg.norm(mean)), 1e-12)
    return matrix, labels


def choose_k(vectors: np.ndarray, rng: np.random.Generator) -> int:
    """The k in 2..MAX_AUTO_K with the best cosine silhouette on a sample."""
    return choose_k_by_silhouette(vectors, rng).k


def choose_k_by_silhouette(vectors: np.ndarray, rng: np.random.Generator) -> KChoice:
    """The k in 2..MAX_AUTO_K with the best cosine silhouette on a sample, and the silhouette of each."""
    sample = vectors[rng.choice(len(vectors), min(SAMPLE, len(vectors)), replace=False)]
    distance = 1 - sample @ sample.T
    best_k, best = 2, -2.0
    tried = []
    for k in range(2, min(MAX_AUTO_K, len(sample) - 1) + 1):
        _, labels = kmeans(sample, k, rng)
        score = silhouette(distance, labels)
        tried.append((k, score))
        if score > best:
            best_k, best = k, score
    return KChoice(best_k, tuple(tried), len(sample))


def silhouette(distance: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette of a clustering, from a full distance matrix."""
    clusters = np.unique(labels)
    if len(clusters) < 2:
        return -1.0
    per_cluster = np.stack([distance[:, labels == c].mean(axis=1) for c in clusters], axis=1)
    own = np.searchsorted(clusters, labels)
    sizes = np.bincount(own)
    a = per_cluster[np.arange(len(labels)), own] * sizes[own] / np.maximum(sizes[own] - 1, 1)
    per_cluster[np.arange(len(labels)), own] = np.inf
    b = per_cluster.min(axis=1)
    s = (b - a) / np.maximum(np.maximum(a, b), 1e-12)
    return float(np.mean(np.where(sizes[own] > 1, s, 0.0)))


def project(vectors: np.ndarray) -> np.ndarray:
    """2-D coordinates in [0, 1] from the first two principal components."""
    if len(vectors) < 3:  # too few points for components: spread them on a line
        return np.linspace([0.0, 0.5], [1.0, 0.5], len(vectors)) if len(vectors) > 1 else np.array([[0.5, 0.5]])
    centred = vectors - vectors.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    points = centred @ vt[:2].T
    low, high = points.min(axis=0), points.max(axis=0)
    return np.asarray((points - low) / np.where(high > low, high - low, 1), np.float64)


def map_html(collection: Collection, *, max_points: int = 2000, thumb: int = 64, seed: int = 0) -> str:
    """A self-contained page placing (up to max_points) thumbnails on the 2-D map of the collection."""
    ids, vectors = collection.vectors()
    if not ids:
        raise NothingToDo("the collection is empty; ingest some images first")
    if len(ids) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(ids), max_points, replace=False))
        ids, vectors = [ids[i] for i in keep], vectors[keep]
    points = project(vectors)
    names = ["path"] + (["cluster_name"] if "cluster_name" in collection.column_names() else [])
    rows = {r["id"]: r for r in collection.columns(["id", *names])}
    items = []
    for image_id, (x, y) in zip(ids, points, strict=True):
        row = rows[image_id]
        items.append(
            {"x": round(float(x), 4), "y": round(float(y), 4), "src": _thumbnail(row["path"], thumb),
             "title": row["path"] + (f" ({row['cluster_name']})" if row.get("cluster_name") else "")}
        )  # fmt: skip
    # "<" escaped so that no path can close the <script> element the data sits in.
    data = json.dumps(items).replace("<", "\\u003c")
    return _PAGE.replace("__TITLE__", html.escape(collection.uri)).replace("__ITEMS__", data)


@dataclass(frozen=True)
class MapPoint:
    """An image on the 2-D map: x and y in [0, 1]; its cluster and the cluster's name when stored."""

    id: str
    x: float
    y: float
    cluster: int | None
    label: str | None


def map_points(collection: Collection, *, max_points: int = 2000, seed: int = 0) -> list[MapPoint]:
    """The map's points (the same sample and projection as map_html), for a page drawing them itself."""
    ids, vectors = collection.vectors()
    if len(ids) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(ids), max_points, replace=False))
        ids, vectors = [ids[i] for i in keep], vectors[keep]
    if not ids:
        return []
    names = [n for n in ("cluster", "cluster_name") if n in collection.column_names()]
    rows = {r["id"]: r for r in collection.columns(["id", *names])} if names else {}
    return [
        MapPoint(
            image_id,
            round(float(x), 4),
            round(float(y), 4),
            rows.get(image_id, {}).get("cluster"),
            rows.get(image_id, {}).get("cluster_name"),
        )
        for image_id, (x, y) in zip(ids, project(vectors), strict=True)
    ]


def _thumbnail(path: str, size: int) -> str:
    try:
        small = thumbnail_image(path, size)
        buffer = io.BytesIO()
        small.save(buffer, "JPEG", quality=70)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    except (OSError, ValueError):
        return ""


_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>clipdex map: __TITLE__</title>
<style>body{margin:0;background:#111;color:#ddd;font:13px system-ui}#m{position:relative;width:100vw;height:100vh}
img{position:absolute;width:48px;height:48px;object-fit:cover;border-radius:4px;transition:transform .1s}
img:hover{transform:scale(3);z-index:9;box-shadow:0 0 8px #000}#t{position:fixed;left:8px;bottom:8px}</style></head>
<body><div id="m"></div><div id="t">__TITLE__ — hover for a closer look; similar pictures sit together</div>
<script>const items=__ITEMS__;const m=document.getElementById("m");
for(const it of items){const i=document.createElement("img");i.src=it.src;i.title=it.title;i.alt=it.title;
i.style.left=`calc(${it.x} * (100% - 48px))`;i.style.top=`calc(${it.y} * (100% - 48px))`;m.append(i);}
</script></body></html>"""
