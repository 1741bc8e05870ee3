"""The ``deepexp3d`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="3D face model fitting and expression analysis.")


@app.command()
def demo(
    image: Optional[Path] = typer.Option(None, help="Face photo (default: scikit-image's astronaut photo)."),
    landmarks: Optional[Path] = typer.Option(
        None, help="Its 68 iBUG landmarks (.pts), used instead of detecting them with dlib."
    ),
    out: Path = typer.Option(Path("deepexp3d-demo"), help="Output folder."),
) -> None:
    """Find the face in a photo, fit the default model (ICT-FaceKit), recognise the emotion, draw the result."""
    from rich.console import Console
    from rich.table import Table

    from deepexp3d.demo import run_demo

    console = Console()
    try:
        result = run_demo(image, landmarks, out, log=console.print)
    except (FileNotFoundError, ValueError, ImportError) as error:
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
    ranked = sorted(result.emotion_probabilities.items(), key=lambda item: -item[1])
    console.print(f"emotion: {result.emotion} (" + ", ".join(f"{n} {p:.2f}" for n, p in ranked) + ")")
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
def predict(
    source: Path = typer.Argument(..., metavar="IMAGE_OR_VIDEO", help="A photo or a video (told apart by content)."),
    classifier: Optional[Path] = typer.Option(
        None, help="A saved emotion classifier (PATH.npz + PATH.json; default: the EMFACS prior)."
    ),
    out: Path = typer.Option(Path("deepexp3d-predict"), help="Output folder."),
    model: str = typer.Option("ict-face", help="'ict-face', 'ict', 'sfm' or a native .npz model file."),
    stride: int = typer.Option(1, min=1, help="Videos: use every STRIDE-th frame."),
    max_frames: Optional[int] = typer.Option(None, min=1, help="Videos: use at most this many frames."),
    progress: bool = typer.Option(True, help="Show a progress bar over a video's frames."),
) -> None:
    """Recognise emotions: every face of a photo, or the main face of a video frame by frame."""
    from deepexp3d.predict import ImagePrediction
    from deepexp3d.predict import predict as run_prediction

    try:
        result = run_prediction(
            source,
            _load_model(model),
            out,
            classifier=classifier,
            stride=stride,
            max_frames=max_frames,
            progress=progress,
            log=typer.echo,
        )
    except (FileNotFoundError, ValueError, ImportError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1)
    if isinstance(result, ImagePrediction):
        for k, face in enumerate(result.faces, start=1):
            emotion = face["emotion"]
            typer.echo(
                f"face {k}: {emotion['label']} ({emotion['probabilities'][emotion['label']]:.2f}), "
                f"landmark RMSE {face['landmark_rmse_px']:.2f} px"
            )
    else:
        counts = {name: result.labels.count(name) for name in result.class_names}
        seen = int(result.face.sum())
        typer.echo(f"{result.n_frames} frames, a face in {seen}, missing {result.n_frames - seen}")
        typer.echo("labels: " + ", ".join(f"{name} {count}" for name, count in counts.items() if count))
    for step, seconds in result.timings.items():
        typer.echo(f"{step:>32}: {seconds:6.2f} s")
    for name, path in result.files.items():
        typer.echo(f"{name:>12}: {path.resolve()}")


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


@app.command("train")
def train_command(
    config: str = typer.Argument(
        ..., help="Built-in config name (default, tiny, synthetic_proof), a .py file with get_config(), "
                  "or a run's config.json."
    ),
    workdir: Optional[Path] = typer.Option(None, help="Run folder (default: runs/<config name>); an existing run resumes."),
    overrides: list[str] = typer.Option(
        [], "--set", metavar="KEY=VALUE",
        help="Override a config field, e.g. steps=1000 or data.annotation_dir=dataset (dotted key; VALUE is read "
             "as JSON when it parses, else as a string). Repeatable.",
    ),
) -> None:
    """Train the expression regressor on annotation shards (resumes an existing run folder)."""
    import logging

    from regressor.cli_train import train_from_config

    parsed = {}
    for item in overrides:
        key, separator, value = item.partition("=")
        if not separator or not key.strip():
            typer.echo(f"error: --set {item!r}: expected KEY=VALUE", err=True)
            raise typer.Exit(code=1)
        parsed[key.strip()] = value  # parsed as JSON (or kept as a string) by the config's override
    log = logging.getLogger("regressor")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False  # not twice when the root logger has a handler too
    try:
        result = train_from_config(config, workdir=workdir, overrides=parsed)
    except (FileNotFoundError, ValueError, ImportError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1)
    resumed = "" if result.resumed_from is None else f" (resumed from step {result.resumed_from})"
    typer.echo(f"step {result.step}{resumed}; checkpoints in {result.workdir / 'checkpoints'}")
    if result.eval_metrics is not None:
        typer.echo(f"validation MSE {result.eval_metrics['mse']:.5f} on {result.eval_metrics['count']} frames "
                   f"(predict-the-mean {result.eval_metrics['baseline_mse']:.5f})")


classifier_app = typer.Typer(
    no_args_is_help=True,
    help="Train and evaluate the emotion classifier on labelled images (CSV: path,label[,subject]).",
)
app.add_typer(classifier_app, name="classifier")


def _feature_cache(cache: Optional[Path], no_cache: bool) -> Optional[Path]:
    from morphable.paths import cache_dir

    if no_cache:
        return None
    return cache if cache is not None else cache_dir() / "features"


def _evaluation_config(kernel: str, trials: int, folds: int, min_per_class: int, seed: int):
    from classifier.evaluation import EvaluationConfig

    return EvaluationConfig(kernel=kernel, n_trials=trials, n_folds=folds, min_per_class=min_per_class, seed=seed)


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _print_scores(title: str, scores: dict) -> None:
    typer.echo(f"{title}: accuracy {_percent(scores['accuracy'])}, balanced {_percent(scores['balanced_accuracy'])}")
    for name, value in scores["per_class_accuracy"].items():
        typer.echo(f"  {name:>12}: {_percent(value):>6} of {scores['class_counts'][name]}")


def _print_chance(chance: dict) -> None:
    typer.echo(f"chance: majority class {_percent(chance['majority_rate'])}, 1/K {_percent(chance['uniform'])}")


def _print_images(report: dict) -> None:
    typer.echo(
        f"{report['images']} images: {report['images_with_face']} with a face, "
        f"{report['images_without_face']} without, {report['images_fit_failed']} failed fits "
        f"({report['features_from_cache']} features from the cache)"
    )
    for name, count in report.get("excluded_classes", {}).items():
        typer.echo(f"excluded class {name!r} ({count} images): {report['excluded_reason']}")


# Options shared by `classifier train` and `classifier evaluate`.
_LABELS = typer.Argument(..., help="CSV with path (or file), label and optional subject columns.")
_TRIALS = typer.Option(20, help="Bayesian-optimisation trials (each a full cross-validation).")
_FOLDS = typer.Option(10, help="Cross-validation folds (subject-disjoint when the CSV has subjects).")
_MIN_PER_CLASS = typer.Option(30, help="Exclude classes with fewer images with a face.")
_FEATURE_CACHE = typer.Option(None, help="Feature cache folder (default: $DEEPEXP3D_CACHE/features).")
_NO_CACHE = typer.Option(False, "--no-cache", help="Fit every image afresh, keep nothing.")


@classifier_app.command("train")
def classifier_train(
    labels: Path = _LABELS,
    out: Path = typer.Option(..., help="Where to save the classifier (OUT.npz + OUT.json)."),
    kernel: str = typer.Option("rbf", help="SVM kernel: 'rbf' or 'linear'."),
    trials: int = _TRIALS,
    folds: int = _FOLDS,
    min_per_class: int = _MIN_PER_CLASS,
    model: str = typer.Option("ict-face", help="'ict-face', 'ict', 'sfm' or a native .npz model file."),
    cache: Optional[Path] = _FEATURE_CACHE,
    no_cache: bool = _NO_CACHE,
    seed: int = typer.Option(0, help="Seed of the folds, the search and the training."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Fit the model to every labelled image, choose C (and gamma) by CV, train and save the classifier."""
    from classifier.evaluation import train_from_images

    try:
        config = _evaluation_config(kernel, trials, folds, min_per_class, seed)
        _, report = train_from_images(
            labels, _load_model(model), out, config=config, cache=_feature_cache(cache, no_cache), progress=progress
        )
    except (FileNotFoundError, ValueError, ImportError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1)
    _print_images(report)
    cv = report["cross_validation"]
    typer.echo(f"{cv['protocol']}; best {cv['best_params']}")
    typer.echo(f"CV accuracy {_percent(cv['accuracy_mean'])} ± {_percent(cv['accuracy_std'])}")
    _print_scores("out-of-fold", cv)
    _print_chance(report["chance"])
    typer.echo("saved: " + ", ".join(report["classifier_files"]))


@classifier_app.command("evaluate")
def classifier_evaluate(
    labels: Path = _LABELS,
    out: Path = typer.Option(..., help="Output folder: report.json and confusion-matrix PNGs."),
    classifier: Optional[Path] = typer.Option(None, help="Score this trained classifier (held-out test)."),
    prior: bool = typer.Option(False, "--prior", help="Score only the label-free EMFACS prior."),
    kernel: str = typer.Option("rbf", help="SVM kernel of the cross-validated classifier: 'rbf' or 'linear'."),
    trials: int = _TRIALS,
    folds: int = _FOLDS,
    min_per_class: int = _MIN_PER_CLASS,
    model: str = typer.Option("ict-face", help="'ict-face', 'ict', 'sfm' or a native .npz model file."),
    cache: Optional[Path] = _FEATURE_CACHE,
    no_cache: bool = _NO_CACHE,
    seed: int = typer.Option(0, help="Seed of the folds, the search and the prior."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Emotion accuracy on labelled images: cross-validated (default), a trained classifier, or the prior.

    Always reports chance (majority class rate and 1/K) and the EMFACS prior on the same images.
    """
    from classifier.evaluation import evaluate_images

    if classifier is not None and prior:
        typer.echo("error: give either --classifier or --prior, not both", err=True)
        raise typer.Exit(code=1)
    try:
        config = _evaluation_config(kernel, trials, folds, min_per_class, seed)
        report = evaluate_images(
            labels,
            _load_model(model),
            out,
            classifier=classifier,
            prior_only=prior,
            config=config,
            cache=_feature_cache(cache, no_cache),
            progress=progress,
        )
    except (FileNotFoundError, ValueError, ImportError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1)
    _print_images(report)
    if report.get("classifier"):
        result = report["classifier"]
        typer.echo(result["protocol"] + (f"; best {result['best_params']}" if "best_params" in result else ""))
        if "accuracy_mean" in result:
            typer.echo(f"CV accuracy {_percent(result['accuracy_mean'])} ± {_percent(result['accuracy_std'])}")
        _print_scores("classifier", result)
    if report.get("prior"):
        _print_scores("EMFACS prior", report["prior"])
    else:
        typer.echo(f"EMFACS prior unavailable: {report.get('prior_unavailable')}")
    _print_chance(report["chance"])
    typer.echo(f"report: {Path(out) / 'report.json'}")


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
