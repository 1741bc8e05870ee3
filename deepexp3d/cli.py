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


def _load_model(name: str):
    from morphable.io import load_ict, load_model

    if name == "ict":
        return load_ict()
    if name == "sfm":
        from morphable.io.eos import load_sfm

        return load_sfm()
    return load_model(name)


if __name__ == "__main__":
    app()
