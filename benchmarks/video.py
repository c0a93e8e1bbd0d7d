"""Videos: moments per second and hours of video indexed per hour (1080p H.264), and the peak
memory of ingesting a long 4K video.

    .venv/bin/python benchmarks/video.py [--seconds 60] [--long-minutes 10] [--long-fps 5] [--ray]

The videos are made here by PyAV (libx264, ultrafast): two 1080p ones of moving pictures (each
frame shifted, a new picture every 10 s: the decoder has real work and the sampler real cuts),
one with a keyframe every second as phones write them (decoded keyframes only) and one with
x264's default of 250 frames (decoded frame by frame); the 4K one of near-static pictures (a new
one every 30 s), which encodes fast enough to make ten minutes of it here. The model is the
ViT-B-32 architecture with random weights (the speed of the real one), on this machine's default
runtime.

1080p: `Clipdex.ingest` of a folder holding the video, timed after the model is loaded, with one
decode process (so decoding and embedding overlap as in any ingest), and the decoding alone in
this process; moments/s = moments / ingest seconds, hours per hour = video length / ingest time.
--ray: the same ingest with --engine ray on a local Ray of this machine's cores (1 encoder actor,
the video decoded in a Ray task), after the local one; Ray's start-up is not counted.
4K: `clipdex ingest --workers 1` as a separate process, its resident memory and its decode
worker's sampled every 0.2 s from /proc (the peak of the sum), beside the same for a folder of one
photo: the difference is what the video costs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from common import table, vit_b_32
from memory import tree_rss_mb

from pipeline import Clipdex
from pipeline.config import Settings
from pipeline.ingest.ray import RayOptions, start_ray
from pipeline.ingest.video import DecodedVideo, Sampling, decode_video
from tests import corpus


def pictures(width: int, height: int, count: int) -> list[np.ndarray]:
    """count different smooth pictures of this size (cheap: made small, then repeated up)."""
    out = []
    rng = np.random.default_rng(0)
    for _ in range(count):
        small = rng.integers(0, 256, size=(height // 60 + 1, width // 60 + 1, 3), dtype=np.uint8)
        big = np.repeat(np.repeat(small, 60, axis=0), 60, axis=1)[:height, :width]
        out.append(np.ascontiguousarray(big))
    return out


def make_video(
    path: Path, width: int, height: int, fps: int, seconds: float, scene_s: float, moving: bool, gop: int = 250
) -> None:
    """An H.264 MP4 of pictures, a new one every scene_s seconds; moving: each frame shifted;
    a keyframe at least every gop frames."""
    if path.exists():
        return
    scenes = pictures(width, height, max(1, round(seconds / scene_s)))
    partial = path.with_suffix(".part.mp4")
    with av.open(str(partial), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23", "g": str(gop)}
        frames = round(seconds * fps)
        still = None
        for n in range(frames):
            scene = scenes[min(len(scenes) - 1, int(n / fps / scene_s))]
            if moving:
                frame = av.VideoFrame.from_ndarray(np.roll(scene, 4 * (n % 120), axis=1), format="rgb24")
            else:  # one converted frame per scene, reused: 4K conversions would dominate otherwise
                if still is None or still[0] is not scene:
                    still = (scene, av.VideoFrame.from_ndarray(scene, format="rgb24").reformat(format="yuv420p"))
                frame = still[1]
            frame.pts = n
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    partial.rename(path)


def throughput(work: Path, model: str, seconds: float, gop: int, ray: bool) -> list[list[str]]:
    folder = work / f"hd-gop{gop}"
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / f"hd_{int(seconds)}s.mp4"
    started = time.perf_counter()
    make_video(video, 1920, 1080, 30, seconds, 10.0, moving=True, gop=gop)
    print(f"made {video.name} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    db = work / f"db-hd-gop{gop}"
    shutil.rmtree(db, ignore_errors=True)
    lib = Clipdex.open(db, model=model, create=True, settings=Settings(workers=1))
    lib.encoder  # noqa: B018 - loaded before the clock starts
    started = time.perf_counter()
    report = lib.ingest([folder])
    ingest_s = time.perf_counter() - started
    started = time.perf_counter()
    decoded = decode_video(str(video), lib.encoder.transform, 10**9, Sampling())
    decode_s = time.perf_counter() - started
    assert isinstance(decoded, DecodedVideo), decoded
    pixels = np.stack([m.pixels for m in decoded.moments])
    started = time.perf_counter()
    for start in range(0, len(pixels), lib.encoder.batch_size):
        lib.encoder.embed_pixels(pixels[start : start + lib.encoder.batch_size])
    embed_s = time.perf_counter() - started
    moments = report.moments
    rows = [[f"1080p H.264, 30 fps, a keyframe every {gop} frames at least", "value"]]
    rows.append(["video length (s)", f"{seconds:.0f}"])
    rows.append(["moments (interval 2 s, cuts every 10 s)", str(moments)])
    rows.append(["decode alone, 1 process (s)", f"{decode_s:.1f}"])
    rows.append(["decode alone, frames of video per s", f"{seconds * 30 / decode_s:.0f}"])
    rows.append([f"embed alone, batches of {lib.encoder.batch_size} (moments/s)", f"{len(pixels) / embed_s:.1f}"])
    rows.append(["ingest, decode + embed (s)", f"{ingest_s:.1f}"])
    rows.append(["moments per second (decode + embed)", f"{moments / ingest_s:.1f}"])
    rows.append(["hours of video indexed per hour", f"{seconds / ingest_s:.1f}"])
    if ray:
        shutil.rmtree(db, ignore_errors=True)
        on_ray = Clipdex.open(db, model=model, create=True, settings=Settings(engine="ray", workers=1))
        started = time.perf_counter()
        ray_report = on_ray.ingest([folder])
        ray_s = time.perf_counter() - started  # the actor's model load included, as in a real run
        assert ray_report.moments == moments, (ray_report.moments, moments)
        rows.append(["ingest --engine ray, 1 actor (s)", f"{ray_s:.1f}"])
        rows.append(["ray time / local time", f"{ray_s / ingest_s:.2f}"])
    return rows


def peak_rss(work: Path, model: str, minutes: float, fps: int) -> list[list[str]]:
    folder = work / "uhd"
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / f"uhd_{minutes:g}min_{fps}fps.mp4"
    started = time.perf_counter()
    make_video(video, 3840, 2160, fps, minutes * 60, 30.0, moving=False)
    print(f"made {video.name} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    photo = work / "one-photo"
    if not photo.exists():
        corpus.large_jpeg(photo / "photo.jpg", megapixels=12)
    rows = [["`clipdex ingest --workers 1`", "peak RSS (MiB)", "seconds", "moments"]]
    for label, target in (("one 12 MP photo", photo), (f"{minutes:g} min 4K H.264 at {fps} fps", folder)):
        peak, seconds, summary = _measure(target, model)
        rows.append([label, f"{peak:.0f}", f"{seconds:.1f}", str(summary.get("moments", 0))])
    return rows


def _measure(folder: Path, model: str) -> tuple[float, float, dict[str, int]]:
    with tempfile.TemporaryDirectory() as tmp:
        command = [str(Path(sys.executable).parent / "clipdex"), "ingest", str(folder), "--db", f"{tmp}/db"]
        command += ["--model", model, "--json", "--workers", "1"]
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=os.environ)
        peak = 0.0
        while process.poll() is None:
            peak = max(peak, tree_rss_mb(process.pid))
            time.sleep(0.2)
        seconds = time.monotonic() - started
        out = (process.stdout.read() if process.stdout else b"").decode().strip().splitlines()
    summary = json.loads(out[-1]) if out else {}
    return peak, seconds, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="Length of the 1080p video.")
    parser.add_argument("--long-minutes", type=float, default=10.0, help="Length of the 4K video.")
    parser.add_argument("--long-fps", type=int, default=5, help="Frame rate of the 4K video.")
    parser.add_argument("--gops", default="30,250", help="Keyframe intervals (frames) of the 1080p videos.")
    parser.add_argument("--skip-long", action="store_true", help="Leave out the 4K memory run.")
    parser.add_argument("--ray", action="store_true", help="Also ingest the 1080p videos with --engine ray.")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clipdex-bench-video")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model = vit_b_32(args.work)
    if args.ray:
        start_ray(RayOptions())  # before the clocks: its start-up is not what is measured
    for gop in (int(g) for g in args.gops.split(",")):
        print(table(throughput(args.work, model, args.seconds, gop, args.ray)))
        print()
    if not args.skip_long:
        print(table(peak_rss(args.work, model, args.long_minutes, args.long_fps)))


if __name__ == "__main__":
    main()
