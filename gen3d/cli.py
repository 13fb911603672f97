"""Command line: ``python -m gen3d infer IMAGE_OR_DIR ... --out DIR``.

Per input image it writes, into ``DIR/<image stem>/``:
  gs.ply           the final Gaussians (standard 3DGS layout; opens in gradio's Model3D, SuperSplat, ...)
  input.png        the preprocessed model input (background removed, recentred, white background)
  views.png        the 32 official output views, 8 per row
  turntable.mp4    a turn around the object
  trajectory.mp4   the sampling trajectory: x0_tilde (2D estimates) above x0_hat (3D renders), per step
  metrics.json     settings, timings and per-step 2D-vs-3D consistency
  mesh.glb         with --mesh: a coloured triangle mesh (TSDF fusion, see ``python -m gen3d mesh``), and mesh.json
A bad file is reported and skipped, the others complete, and the exit code is 1 if any failed.
Existing results are kept unless --overwrite.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def default_preset(device: str) -> str:
    return "tiny" if device == "cpu" else "gen3diffusion"


def collect_inputs(paths: list[str]) -> tuple[list[Path], list[str]]:
    """Files given directly, plus image files inside given folders (sorted); and error lines."""
    files, errors = [], []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                errors.append(f"{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            errors.append(f"{path}: no such file or folder")
    return files, errors


def keep_everything(rgb):
    """A background 'remover' that keeps the whole image (--no-background-removal)."""
    import numpy as np

    return np.full(rgb.shape[:2], 255, dtype=np.uint8)


def add_infer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--out", required=True, help="output folder (one subfolder per image)")
    parser.add_argument("--preset", default=None,
                        help="tiny, gen3diffusion, human3diffusion, or a checkpoint folder "
                             "(default: tiny on CPU, gen3diffusion on a GPU)")
    parser.add_argument("--checkpoint-dir", default=None, help="folder with the released model.safetensors and model_1.safetensors")
    parser.add_argument("--base-dir", default=None, help="local copy of ashawkey/imagedream-ipmv-diffusers")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the preset's, 50)")
    parser.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance", choices=("3d", "2d"), default="3d",
                        help="3d: synchronized sampling (the paper); 2d: plain multi-view diffusion")
    parser.add_argument("--border-ratio", type=float, default=None,
                        help="foreground border ratio (default 0.45 objects, 0.227 people)")
    parser.add_argument("--no-background-removal", action="store_true", help="use the image as it is")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--autocast", choices=("auto", "off", "bfloat16", "float16"), default="auto",
                        help="dtype of the network passes: auto = bfloat16 where the device computes it natively")
    parser.add_argument("--turntable-frames", type=int, default=48)
    parser.add_argument("--mesh", action="store_true", help="also write mesh.glb, a coloured TSDF mesh (+ mesh.json)")
    parser.add_argument("--mesh-quality", type=mesh_quality, default="low",
                        help="views of the mesh: low (24), high (72) or a number (see the mesh command)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing results")


def run_infer(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from gen3d.cameras import output_cameras
    from gen3d.export import (
        image_grid, render_views, save_image, summarize_trajectory, to_uint8, trajectory_frame, turntable_cameras,
        write_metrics, write_video,
    )
    from gen3d.gaussians import save_ply
    from gen3d.pipeline import Gen3DPipeline
    from gen3d.preprocess import InvalidImageError, preprocess
    from gen3d.sampler import SamplerConfig, sample
    from gen3d.weights import WeightsError

    files, errors = collect_inputs(args.inputs)
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    device = args.device or default_device()
    preset = args.preset or default_preset(device)
    try:
        pipe = Gen3DPipeline.from_pretrained(preset, device=device, dtype=getattr(torch, args.dtype),
                                             checkpoint_dir=args.checkpoint_dir, base_dir=args.base_dir)
    except WeightsError as err:
        print(f"error: cannot load '{preset}': {err}", file=sys.stderr)
        return 2
    from gen3d.sampler import resolve_autocast

    autocast, autocast_note = resolve_autocast(args.autocast, device, args.dtype)
    print(f"model: {pipe.describe()}")
    for note in pipe.notes + [autocast_note]:
        print(f"  {note}")
    config = SamplerConfig(num_inference_steps=args.steps or pipe.config.num_inference_steps,
                           guidance_scale=pipe.config.guidance_scale if args.cfg is None else args.cfg,
                           guidance=args.guidance, autocast=autocast)
    border = args.border_ratio if args.border_ratio is not None else pipe.config.border_ratio
    out_root = Path(args.out)
    failed = len(errors)
    for path in files:
        out = out_root / (path.stem.strip(". ") or "image")  # a file named '...png' must not write into out's parent
        if (out / "gs.ply").exists() and not args.overwrite:
            print(f"{path}: kept existing results in {out} (use --overwrite to redo)")
            continue
        try:
            pre = preprocess(path, border_ratio=border, size=pipe.config.image_size,
                             remover=keep_everything if args.no_background_removal else "auto")
        except InvalidImageError as err:
            print(f"error: {path}: {err}", file=sys.stderr)
            failed += 1
            continue
        start = time.perf_counter()
        frames, records = [], []
        generator = torch.Generator().manual_seed(args.seed)
        bar = tqdm(total=config.num_inference_steps, desc=path.name, unit="step", leave=False)
        for record in sample(pipe, pre.image, config, generator):
            frames.append(trajectory_frame(record.x0_tilde_images, record.x0_hat_images))
            records.append(record)
            bar.update(1)
        bar.close()
        final = records[-1].final_gaussians
        seconds = time.perf_counter() - start
        out.mkdir(parents=True, exist_ok=True)
        save_ply(final, out / "gs.ply")
        save_image(pre.image[0], out / "input.png")
        size = 2 * pipe.config.image_size
        save_image(image_grid(render_views(final, output_cameras(size), pipe.config.render_mode), columns=8),
                   out / "views.png")
        turntable = render_views(final, turntable_cameras(args.turntable_frames, size), pipe.config.render_mode)
        write_video(to_uint8(turntable), out / "turntable.mp4", fps=24)
        write_video(frames, out / "trajectory.mp4", fps=8)
        write_metrics({"input": str(path), "preset": preset, "model": pipe.describe(), "seed": args.seed,
                       "steps": config.num_inference_steps, "guidance_scale": config.guidance_scale,
                       "guidance": config.guidance, "border_ratio": border, "preprocessing": pre.steps,
                       "seconds": round(seconds, 3), "final_gaussians": final.stats(),
                       "trajectory": summarize_trajectory(records)}, out / "metrics.json")
        if args.mesh:
            from gen3d.mesh import extract_mesh, write_mesh_files

            try:
                mesh = extract_mesh(final, quality=args.mesh_quality)
            except ValueError as err:  # e.g. nothing opaque enough to give a surface
                print(f"error: {path}: no mesh: {err}", file=sys.stderr)
                failed += 1
            else:
                write_mesh_files(mesh, out)
                print(f"{path}: mesh of {len(mesh.mesh.faces)} faces in {mesh.seconds['total']:.1f} s")
        print(f"{path}: {len(final)} Gaussians, mean 2D-vs-3D PSNR {float(records[-1].psnr.mean()):.2f} dB, "
              f"{seconds:.1f} s -> {out}")
    if failed:
        print(f"{failed} input(s) failed", file=sys.stderr)
    return 1 if failed else 0


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (--data, --out, --stage, --steps, --batch-size, ...)."""
    import dataclasses

    from gen3d.train import TrainConfig

    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, type=lambda v: v.lower() in ("1", "true", "yes"), default=f.default,
                                metavar="true|false")
        elif f.default is dataclasses.MISSING:
            parser.add_argument(flag, required=True)
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default)
    parser.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long")


def run_train(args: argparse.Namespace) -> int:
    import dataclasses

    from gen3d.train import TrainConfig, train

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    train(TrainConfig(**values), max_seconds=None if args.max_minutes is None else 60 * args.max_minutes)
    return 0


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="dataset folder (gen3d-multiview-v1)")
    parser.add_argument("--size", type=int, default=64, help="image size in pixels")
    parser.add_argument("--objects", type=int, default=1000, help="training objects")
    parser.add_argument("--avatars", type=int, default=0, help="training people")
    parser.add_argument("--heldout", type=int, default=100, help="held-out objects (and as many people if --avatars)")
    parser.add_argument("--novel", type=int, default=8, help="novel views per object")
    parser.add_argument("--workers", type=int, default=1)


def run_data(args: argparse.Namespace) -> int:
    from gen3d.data import split_seeds, write_dataset

    for domain, n in (("object", args.objects), ("avatar", args.avatars)):
        if n:
            seeds = split_seeds("heldout", args.heldout) + split_seeds("train", n)
            ids = write_dataset(args.out, seeds, image_size=args.size, domain=domain, n_novel=args.novel,
                                num_workers=args.workers)
            print(f"{len(ids)} {domain}s in {args.out}")
    return 0


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    from gen3d.evaluate import DOMAINS

    model = parser.add_mutually_exclusive_group()
    model.add_argument("--preset", default=None,
                       help="tiny (default), gen3diffusion or human3diffusion; tiny-random: the tiny architecture "
                            "with random weights (testing the evaluation itself)")
    model.add_argument("--checkpoint", default=None, help="a checkpoint folder (gen3d layout or the released files)")
    parser.add_argument("--seeds", required=True,
                        help="procedural objects START-END (inclusive) or SEED; held-out seeds start at 1000000")
    parser.add_argument("--domain", choices=DOMAINS, default=None,
                        help="objects, people (avatar) or both per seed (mixed); default: the model's domain")
    parser.add_argument("--data", default=None,
                        help="dataset folder to read the ground truth from (objects it lacks are rendered)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the model's)")
    parser.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: the model's)")
    parser.add_argument("--modes", default="3d,2d", help="comma-separated sampling modes to compare (3d, 2d)")
    parser.add_argument("--novel", type=int, default=8, help="novel views per object")
    parser.add_argument("--guidance-window", type=float, nargs=2, default=(0.0, 1.0), metavar=("START", "END"),
                        help="3d mode: 3D guidance on for this fraction of the steps only, [START, END) "
                             "(default 0 1: all steps, the paper's sampler)")
    parser.add_argument("--seed", type=int, default=0, help="object s is sampled with generator seed SEED + s")
    parser.add_argument("--json", default=None, help="write the figures as JSON here")
    parser.add_argument("--figure", default=None, help="write a PNG of results and ground truth here")
    parser.add_argument("--figure-objects", type=int, default=4, help="objects in the figure")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--allow-train-seeds", action="store_true",
                        help="allow seeds below 1000000 (training objects: the figures will flatter the model)")


def _evaluation_settings(args: argparse.Namespace) -> tuple[list[int], tuple[str, ...]]:
    """Seeds and modes from the flags; ValueError with a readable message on bad values."""
    from gen3d.evaluate import check_seeds, parse_seed_range
    from gen3d.sampler import GUIDANCE_MODES

    seeds = parse_seed_range(args.seeds)
    check_seeds(seeds, args.allow_train_seeds)
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if not modes or set(modes) - set(GUIDANCE_MODES) or len(set(modes)) != len(modes):
        raise ValueError(f"--modes must list distinct values of {', '.join(GUIDANCE_MODES)}, got {args.modes!r}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {args.steps}")
    if args.novel < 1:
        raise ValueError(f"--novel must be at least 1, got {args.novel}")
    start, end = args.guidance_window
    if not 0 <= start <= end <= 1:
        raise ValueError(f"--guidance-window must satisfy 0 <= START <= END <= 1, got {start:g} {end:g}")
    if args.data is not None and not (Path(args.data) / "meta.json").is_file():
        raise ValueError(f"--data {args.data}: not a dataset folder (no meta.json)")
    return seeds, modes


def run_evaluate(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from gen3d.evaluate import evaluate, save_figure
    from gen3d.export import write_metrics
    from gen3d.pipeline import Gen3DPipeline, tiny_pipeline
    from gen3d.weights import WeightsError

    try:
        seeds, modes = _evaluation_settings(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    device, dtype = args.device or default_device(), getattr(torch, args.dtype)
    name = args.checkpoint or args.preset or "tiny"
    try:
        pipe = (tiny_pipeline(seed=0).to(device=device, dtype=dtype) if name == "tiny-random"
                else Gen3DPipeline.from_pretrained(name, device=device, dtype=dtype))
    except WeightsError as err:
        print(f"error: cannot load '{name}': {err} (--checkpoint DIR evaluates a trained folder)", file=sys.stderr)
        return 2
    print(f"model: {pipe.describe()}")
    steps = args.steps or pipe.config.num_inference_steps
    objects = len(seeds) * (2 if (args.domain or pipe.config.domain) == "mixed" else 1)
    bar = tqdm(total=objects * len(modes) * steps, unit="step", desc="evaluate")
    done = []

    def report(row) -> None:
        done.append(row)
        bar.write(f"[{len(done)}/{objects * len(modes)}] {row.object_id} ({row.family}) {row.mode}: "
                  f"novel PSNR {row.psnr_novel:.2f} dB, SSIM {row.ssim_novel:.3f}, IoU {row.iou_novel:.3f}, "
                  f"2D-vs-3D {row.consistency_psnr:.2f} dB, {row.seconds:.1f} s")

    try:
        evaluation = evaluate(pipe, seeds, modes, num_inference_steps=steps, guidance_scale=args.cfg,
                              domain=args.domain, data=args.data, n_novel=args.novel, seed=args.seed,
                              guidance_window=tuple(args.guidance_window), allow_train_seeds=args.allow_train_seeds,
                              keep_images=args.figure_objects if args.figure else 0,
                              on_step=lambda record: bar.update(1), on_result=report)
    except ValueError as err:  # e.g. a dataset folder without the split or with too few novel views
        bar.close()
        print(f"error: {err}", file=sys.stderr)
        return 2
    bar.close()
    print(evaluation.table())
    if args.json:
        print(f"figures -> {write_metrics(evaluation.to_dict(), args.json)}")
    if args.figure:
        print(f"figure -> {save_figure(evaluation, args.figure, args.figure_objects)}")
    return 0


def add_assemble_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="gen3d folder giving every part (e.g. the 2D run's checkpoint)")
    parser.add_argument("--reconstructor", default="", help="gen3d folder whose reconstructor replaces the base's")
    parser.add_argument("--vae-decoder", default="", help="gen3d folder whose VAE decoder replaces the base's")
    parser.add_argument("--out", required=True)
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float16")
    parser.add_argument("--name", default="tiny")


def run_assemble(args: argparse.Namespace) -> int:
    from gen3d.train import assemble

    out = assemble(args.base, args.out, args.reconstructor, args.vae_decoder, args.dtype, args.name)
    size = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file())
    print(f"{out}: {size / 1e6:.1f} MB")
    return 0


def mesh_quality(text: str) -> str | int:
    """argparse type of a mesh quality: "low", "high" or a positive number of views."""
    if text in ("low", "high"):
        return text
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected low, high or a number of views, got {text!r}")


def add_mesh_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="Gaussian .ply files and/or result folders holding gs.ply")
    parser.add_argument("--quality", type=mesh_quality, default="low",
                        help="low: 24 views at 192², 192³ voxels; high: 72 views at 512², 512³ voxels; "
                             "N: N views with the low settings")
    parser.add_argument("--resolution", type=int, default=None, help="voxels along each edge of the [-0.6, 0.6]³ cube")
    parser.add_argument("--render-size", type=int, default=None, help="rendered view size in pixels")
    parser.add_argument("--max-faces", type=int, default=None, help="decimate above this many faces (0: never)")
    parser.add_argument("--formats", default="glb", help="comma-separated mesh formats: glb, obj, ply")
    parser.add_argument("--normal-weights", default=None,
                        help="pifuhd normal network (.safetensors) for the official depth refinement; "
                             "see gen3d/normal_refine.py to convert pifuhd.pt")
    parser.add_argument("--out", default=None,
                        help="output folder (default: beside each input; mesh.* in a result folder, "
                             "<name>_mesh.* beside another .ply)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: best available)")


def run_mesh(args: argparse.Namespace) -> int:
    from gen3d.gaussians import load_ply
    from gen3d.mesh import MESH_FORMATS, extract_mesh, write_mesh_files
    from gen3d.weights import WeightsError

    formats = tuple(f".{f.strip().lower().lstrip('.')}" for f in args.formats.split(",") if f.strip())
    unknown = [f for f in formats if f not in MESH_FORMATS]
    if unknown or not formats:
        print(f"error: --formats takes {', '.join(f[1:] for f in MESH_FORMATS)}; got {args.formats!r}", file=sys.stderr)
        return 2
    device = args.device or default_device()
    refiner = None
    if args.normal_weights:
        from gen3d.normal_refine import DepthRefiner

        try:
            refiner = DepthRefiner.from_file(args.normal_weights, device=device)
        except WeightsError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    failed = 0
    for raw in args.inputs:
        given = Path(raw)
        ply = given / "gs.ply" if given.is_dir() else given
        if not ply.is_file():
            print(f"error: {raw}: no such .ply file or result folder with gs.ply", file=sys.stderr)
            failed += 1
            continue
        name = ply.parent.name if ply.name == "gs.ply" else ply.stem
        if args.out:
            directory, stem = Path(args.out), name
        else:
            directory, stem = ply.parent, "mesh" if ply.name == "gs.ply" else f"{ply.stem}_mesh"
        try:
            result = extract_mesh(load_ply(ply).to(device), quality=args.quality, resolution=args.resolution,
                                  render_size=args.render_size, max_faces=args.max_faces, normal_weights=refiner)
        except ValueError as err:
            print(f"error: {raw}: {err}", file=sys.stderr)
            failed += 1
            continue
        paths = write_mesh_files(result, directory, stem, formats)
        m = result.mesh
        print(f"{raw}: {len(m.vertices)} vertices, {len(m.faces)} faces, watertight {m.is_watertight}, "
              f"{result.seconds['total']:.1f} s -> {', '.join(str(p) for p in paths)}")
        for note in result.notes:
            print(f"  {note}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gen3d", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_infer_arguments(sub.add_parser("infer", help="image(s) -> Gaussian splats, views, videos, metrics"))
    add_data_arguments(sub.add_parser("data", help="render a procedural multi-view dataset"))
    add_train_arguments(sub.add_parser("train", help="joint 2D + 3D training (Algorithm 1), resumable"))
    add_evaluate_arguments(sub.add_parser("evaluate", help="held-out PSNR, SSIM, mask IoU: 3d vs 2d guidance"))
    add_assemble_arguments(sub.add_parser("assemble", help="combine staged training runs into one checkpoint folder"))
    add_mesh_arguments(sub.add_parser("mesh", help="Gaussian .ply or result folder -> coloured mesh (.glb/.obj/.ply)"))
    args = parser.parse_args(argv)
    commands = {"infer": run_infer, "data": run_data, "train": run_train, "evaluate": run_evaluate,
                "assemble": run_assemble, "mesh": run_mesh}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
