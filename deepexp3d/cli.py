"""The ``deepexp3d`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="3D face model fitting and expression analysis.")


@app.command()
def demo(
    image: Optional[Path] = typer.Option(None, help="Face photo (default: a sample photo from the shared data)."),
    landmarks: Optional[Path] = typer.Option(None, help="Its 68 iBUG landmarks (.pts; default: next to the image)."),
    out: Path = typer.Option(Path("deepexp3d-demo"), help="Output folder."),
) -> None:
    """Fit the default model (ICT-FaceKit) to a photo's landmarks and write pictures of the fit."""
    from rich.console import Console
    from rich.table import Table

    from deepexp3d.demo import run_demo

    console = Console()
    try:
        result = run_demo(image, landmarks, out, log=console.print)
    except (FileNotFoundError, ValueError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(code=1)
    table = Table(title="deepexp3d demo")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for step, seconds in result.timings.items():
        table.add_row(step, f"{seconds:.2f}")
    console.print(table)
    console.print(f"landmark RMSE: {result.landmark_rmse_px:.2f} px")
    console.print("strongest expressions: " + ", ".join(f"{n} {v:.2f}" for n, v in result.top_expressions))
    for name, path in result.files.items():
        console.print(f"{name:>10}: {path.resolve()}")


@app.command()
def info(
    model: str = typer.Argument("ict", help="'ict', 'sfm', or a native .npz model file."),
) -> None:
    """Print a model's size, kind and landmark coverage."""
    import numpy as np

    from morphable import landmark_mask

    try:
        loaded = _load_model(model)
    except (FileNotFoundError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1)
    typer.echo(repr(loaded))
    typer.echo(f"triangles: {len(loaded.triangles)}")
    typer.echo(f"landmarks with a fixed vertex: {int(np.sum(landmark_mask(loaded)))} of {len(loaded.landmark_indices)}")
    typer.echo(f"contour candidates: right {len(loaded.contour_right)}, left {len(loaded.contour_left)}")
    typer.echo("expression components: " + ", ".join(loaded.expression_names))


@app.command()
def annotate(
    video_dir: Path = typer.Argument(..., help="Folder of face videos (searched recursively)."),
    out_dir: Path = typer.Argument(..., help="Output folder (an existing one is resumed)."),
    model: str = typer.Option("ict-face", help="'ict-face', 'ict', 'sfm' or a native .npz model file."),
    workers: Optional[int] = typer.Option(None, help="Worker processes for detection and cropping (default: CPU count)."),
    engine: str = typer.Option("process", help="'process' (local workers) or 'ray'."),
    stride: int = typer.Option(1, help="Use every STRIDE-th frame."),
    max_frames: Optional[int] = typer.Option(None, help="At most this many frames per video."),
    upsample: int = typer.Option(1, help="dlib face-detector upsampling (0 is faster, misses small faces)."),
    prune_quantile: float = typer.Option(0.999, help="Prune videos whose ‖identity‖² exceeds this χ² quantile."),
    seed: int = typer.Option(0, help="Seed of the train/validation/test split."),
) -> None:
    """Turn a folder of face videos into training shards (detect → clean → fit → prune → write)."""
    from fitting.annotate import AnnotateConfig
    from fitting.annotate import annotate as run_annotation

    config = AnnotateConfig(
        stride=stride, max_frames=max_frames, detector_upsample=upsample, prune_quantile=prune_quantile, seed=seed
    )
    try:
        summary = run_annotation(
            video_dir, out_dir, model=_load_model(model), config=config, workers=workers, engine=engine
        )
    except (FileNotFoundError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1)
    typer.echo(
        f"{summary.videos} videos: {summary.ok} ok, {summary.pruned} pruned, {summary.failed} failed; "
        f"{summary.frames_kept} frames kept"
    )
    for reason, count in summary.reasons.items():
        typer.echo(f"  {reason}: {count}")
    typer.echo(f"manifest, shards, splits and report in {out_dir}")


@app.command("annotate-prune")
def annotate_prune(
    out_dir: Path = typer.Argument(..., help="An annotation output folder."),
    prune_list: Path = typer.Argument(..., help="Text file with one video id per line ('#' comments)."),
) -> None:
    """Manually prune videos of an annotated dataset (no refitting)."""
    from fitting.annotate import apply_prune_list

    try:
        pruned = apply_prune_list(out_dir, prune_list)
    except (FileNotFoundError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1)
    typer.echo(f"pruned {len(pruned)} videos: {', '.join(pruned) or '-'}")


def _load_model(name: str):
    from morphable.io import load_ict, load_model

    if name == "ict":
        return load_ict()
    if name == "ict-face":
        return load_ict(region="face")
    if name == "sfm":
        from morphable.io.eos import load_sfm

        return load_sfm()
    return load_model(name)


if __name__ == "__main__":
    app()
