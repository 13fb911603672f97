"""Seconds and peak memory of ``extract_mesh`` on this machine, one fresh process per case.

    python benchmarks/mesh_bench.py [--scenes tiny random] [--qualities low high] [--omp-passive]

Scenes:
* ``tiny``: the tiny preset's output for ../shared/images/objects/object_0.png (``tiny_pipeline(seed=0)``,
  random weights, 10 sampler steps): 4,096 Gaussians, large and overlapping, a worst case for the
  fusion (noisy depth everywhere).
* ``random``: 65,536 ``random_gaussians`` in the [-0.5, 0.5]³ cube, scales 3-30 mm (the official
  reconstructor's count).

Each case runs in a child process, so "peak MB" is that process's peak resident memory
(``ru_maxrss``) and "extract MB" its growth during ``extract_mesh`` (peak minus the resident memory
just before the call, after torch and the scene are loaded). The load average is printed with each
row: timings on a shared machine depend on it. ``--omp-passive`` sets OMP_WAIT_POLICY=PASSIVE in the
children: on a busy machine torch's OpenMP threads otherwise spin-wait for each other at every op.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GEN3D_SHARED", REPO.parent / "shared"))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def make_scene(name: str, cache: Path):
    import torch

    from gen3d.gaussians import load_ply, random_gaussians, save_ply

    if name == "random":
        return random_gaussians(65536, torch.Generator().manual_seed(0), extent=0.5, scale_range=(0.003, 0.03))
    ply = cache / "tiny_object_0.ply"
    if not ply.is_file():
        from gen3d.pipeline import tiny_pipeline
        from gen3d.preprocess import preprocess
        from gen3d.sampler import SamplerConfig, generate

        pipe = tiny_pipeline(seed=0)
        image = preprocess(SHARED / "images" / "objects" / "object_0.png", border_ratio=pipe.config.border_ratio,
                           size=pipe.config.image_size).image
        record = generate(pipe, image, SamplerConfig(num_inference_steps=10), torch.Generator().manual_seed(0))
        save_ply(record.final_gaussians, ply)
    return load_ply(ply)


def child(scene: str, quality: str, cache: Path) -> None:
    """Run one case and print one JSON line."""
    import torch

    sys.path.insert(0, str(REPO))
    from gen3d.mesh import extract_mesh

    gaussians = make_scene(scene, cache)
    before = rss_mb()
    start = time.perf_counter()
    result = extract_mesh(gaussians, quality=quality)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # kB on Linux
    print(json.dumps({"scene": scene, "gaussians": len(gaussians), "quality": quality, "seconds": seconds,
                      "stages": {k: round(v, 1) for k, v in result.seconds.items()},
                      "faces": len(result.mesh.faces), "watertight": bool(result.mesh.is_watertight),
                      "peak_mb": peak, "extract_mb": peak - before, "threads": torch.get_num_threads(),
                      "config": {k: getattr(result.config, k) for k in ("views", "render_size", "resolution")}}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", nargs="+", default=["tiny", "random"], choices=["tiny", "random"])
    parser.add_argument("--qualities", nargs="+", default=["low", "high"])
    parser.add_argument("--omp-passive", action="store_true", help="OMP_WAIT_POLICY=PASSIVE in the children")
    parser.add_argument("--cache", default=None, help="folder for the generated tiny-model scene (default: a temp dir)")
    parser.add_argument("--child", nargs=2, metavar=("SCENE", "QUALITY"), help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cache = Path(args.cache or Path(tempfile.gettempdir()) / "gen3d_mesh_bench")
    cache.mkdir(parents=True, exist_ok=True)
    if args.child:
        child(*args.child, cache)
        return
    if args.prepare:
        sys.path.insert(0, str(REPO))
        make_scene("tiny", cache)
        return

    env = dict(os.environ, PYTHONPATH=str(REPO))
    if args.omp_passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    print(f"CPU cores {os.cpu_count()}, OMP_WAIT_POLICY={env.get('OMP_WAIT_POLICY', 'unset')}")
    header = ("| scene | Gaussians | quality (views, render, voxels) | seconds | render / fuse / mc / decimate | "
              "faces | watertight | peak MB | extract MB | load before -> after |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for scene in args.scenes:
        if scene == "tiny":  # build the scene once, outside the timed children
            subprocess.run([sys.executable, __file__, "--prepare", "--cache", str(cache)], env=env, check=True,
                           capture_output=True)
        for quality in args.qualities:
            load_before = os.getloadavg()[0]
            done = subprocess.run([sys.executable, __file__, "--child", scene, quality, "--cache", str(cache)],
                                  env=env, capture_output=True, text=True)
            if done.returncode:
                print(f"| {scene} | {quality} | failed: {done.stderr.strip().splitlines()[-1]} |")
                continue
            out = done.stdout
            row = json.loads(out.strip().splitlines()[-1])
            s, c = row["stages"], row["config"]
            stages = " / ".join(str(s.get(k, "-")) for k in ("render", "fuse", "marching_cubes", "decimate"))
            print(f"| {scene} | {row['gaussians']:,} | {quality} ({c['views']}, {c['render_size']}², "
                  f"{c['resolution']}³) | {row['seconds']:.1f} | {stages} | {row['faces']:,} | {row['watertight']} | "
                  f"{row['peak_mb']:.0f} | {row['extract_mb']:.0f} | {load_before:.2f} -> {os.getloadavg()[0]:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
