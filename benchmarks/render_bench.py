"""Tiled torch renderer vs the naive dense reference (tests/test_render.py), measured in one run.

    python benchmarks/render_bench.py [--mode gof|ewa] [--sizes 256 512] [--counts 4096 16384 65536]

Scene: ``random_gaussians`` inside the [-0.5, 0.5]³ cube with scales 0.003-0.03 (log-uniform, like a trained
reconstructor's output), rendered into the 4 official target views. Forward = one ``render`` call for all
4 views (default outputs: colour, alpha, depth, normals in GOF mode); backward = ``torch.autograd.grad``
of a random weighted sum of colour, alpha and depth w.r.t. all five Gaussian fields (the forward with
autograd recording runs untimed before it). The dense reference
evaluates every Gaussian at every pixel; it is timed on a few image rows of one view and extrapolated
linearly to 4 full views (its cost is exactly proportional to the number of pixels).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from gen3d.cameras import target_cameras  # noqa: E402
from gen3d.gaussians import Gaussians, random_gaussians  # noqa: E402
from gen3d.render import render  # noqa: E402
from test_render import dense_render  # noqa: E402  (the independent dense reference)

FIELDS = ("means", "quats", "scales", "opacities", "colors")


def timed(fn, repeats: int, setup=None) -> float:
    """Best wall time of ``repeats`` calls of ``fn(setup())`` after a warm-up (the least disturbed run on a
    shared machine); ``setup`` runs untimed."""
    setup = setup or (lambda: None)
    fn(setup())
    times = []
    for _ in range(repeats):
        arg = setup()
        start = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - start)
    return min(times)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def bench(n: int, size: int, mode: str, repeats: int, dense_rows: int) -> dict:
    g = random_gaussians(n, torch.Generator().manual_seed(0), extent=0.5, scale_range=(0.003, 0.03))
    cams = target_cameras(size)
    with torch.no_grad():
        fwd = timed(lambda _: render(g, cams, mode=mode), repeats)
        out = render(g, cams, mode=mode)

    params = [getattr(g, f).clone().requires_grad_() for f in FIELDS]
    weights = {k: torch.randn(getattr(out, k).shape, generator=torch.Generator().manual_seed(1))
               for k in ("color", "alpha", "depth")}

    def forward_with_grad():
        o = render(Gaussians(*params), cams, mode=mode)
        return sum((getattr(o, k) * w).sum() for k, w in weights.items())

    bwd = timed(lambda loss: torch.autograd.grad(loss, params), max(1, repeats - 1), setup=forward_with_grad)
    rows = torch.arange(dense_rows) + size // 2 - dense_rows // 2  # rows through the object
    with torch.no_grad():
        dense_part = timed(lambda _: dense_render(g, cams[[0]], mode, rows=rows), 1)
    dense_full = dense_part * (size / dense_rows) * len(cams)
    return {"n": n, "size": size, "fwd": fwd, "bwd": bwd, "dense": dense_full,
            "speedup": dense_full / fwd, "mean_contrib": out.n_contrib.float().mean().item(),
            "coverage": (out.alpha > 0.5).float().mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", default="gof", choices=["gof", "ewa"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--counts", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dense-rows", type=int, default=1,
                        help="image rows of one view timed for the dense reference")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    load_before = load()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, mode {args.mode}, load before: {load_before}")
    results = []
    for size in args.sizes:
        for n in args.counts:
            r = bench(n, size, args.mode, args.repeats, args.dense_rows)
            results.append(r)
            print(f"N={n:6d} {size}²: forward {r['fwd']:.3f} s (4 views), backward {r['bwd']:.3f} s, "
                  f"dense ~{r['dense']:.1f} s, x{r['speedup']:.0f}; mean Gaussians per pixel {r['mean_contrib']:.1f}, "
                  f"alpha > 0.5 on {100 * r['coverage']:.0f}% of pixels", flush=True)
    print(f"load after: {load()}\n")
    print("| Gaussians | image | forward, 4 views | per view | backward, 4 views | dense reference, 4 views* | "
          "speed-up vs dense |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['n']:,} | {r['size']}² | {r['fwd']:.2f} s | {1000 * r['fwd'] / 4:.0f} ms | {r['bwd']:.2f} s | "
              f"{r['dense']:.0f} s | {r['speedup']:.0f}x |")
    print(f"\n*dense: every Gaussian at every pixel, timed on {args.dense_rows} row(s) of one view and extrapolated "
          f"to 4 full views (it holds [pixels, N, 3] tensors, so at large N it is also memory-bound). Mode {args.mode}, {torch.get_num_threads()} CPU threads, best of {args.repeats} runs "
          f"(backward: best of {max(1, args.repeats - 1)}); load average before {load_before}, after {load()}.")


if __name__ == "__main__":
    main()
