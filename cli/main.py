"""`mla`: train, evaluate, export, validate, serve and predict.

Heavy imports (torch) happen inside the commands that need them, so `mla --help` and
the service's commands stay light.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

if TYPE_CHECKING:
    from common.manifest import Manifest

app = typer.Typer(
    name="mla", help="Train, export and serve balanced multimodal classifiers (MLA).", no_args_is_help=True, add_completion=False
)
err = Console(stderr=True, soft_wrap=True)  # one error, one line: no wrapping at 80 columns

DataOpt = Annotated[str, typer.Option("--data", help="demo | demo:SEED | csv:PATH | cremad:ROOT")]


def _input_settings(
    items: list[str], option: str = "--set", example: str = "audio.clip_samples=32000"
) -> dict[str, dict[str, Any]]:
    """`--set audio.clip_samples=32000` -> {"audio": {"clip_samples": 32000}}; values are JSON where they parse."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        modality, dot, name = key.partition(".")
        if not (eq and dot and modality and name):
            raise ValueError(f"{option} takes MODALITY.KEY=VALUE, as {example}; got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out.setdefault(modality, {})[name] = value
    return out


def _older_augment() -> list[str]:
    """What `--audio-augment`, the older spelling, turns on: the kinds whose augmentation that option was."""
    from common.modalities import KINDS

    return [name for name, k in KINDS.items() if k.older_augment_option == "audio_augment"]


def vars_of(**given: Path | None) -> list[tuple[str, Path]]:
    """The older shorthand options that were given, as (modality, path)."""
    return [(k, p) for k, p in given.items() if p is not None]


def _fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False)],
        force=True,
    )


@app.command()
def train(
    data: DataOpt = "demo",
    method: Annotated[str, typer.Option(help="mla | joint | unimodal")] = "mla",
    out: Annotated[Path, typer.Option("--out", help="run directory")] = Path("runs/demo"),
    epochs: Annotated[int, typer.Option(min=1)] = 12,
    encoder: Annotated[str, typer.Option(help="small | resnet18")] = "small",
    seed: int = 0,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    lr: Annotated[float, typer.Option(min=0.0)] = 0.05,
    owm_alpha: Annotated[
        str,
        typer.Option(help="MLA projection alpha over unit-norm features, or 'auto': the best of 1, 10, 100, 1000 on validation"),
    ] = "auto",
    no_projection: Annotated[bool, typer.Option("--no-projection", help="MLA without the head projection (ablation)")] = False,
    augment: Annotated[
        list[str] | None,
        typer.Option(
            "--augment",
            metavar="MODALITY",
            help=(
                "turn on a modality's training-time augmentation (audio: its log-mel warped and masked; video, image:"
                " each clip turned, scaled, sheared and shifted); repeatable"
            ),
        ),
    ] = None,
    augment_set: Annotated[
        list[str] | None,
        typer.Option(
            "--augment-set",
            metavar="MODALITY.KEY=VALUE",
            help="a setting of a modality's augmentation, as audio.stretch=0.1 (its pace changed by up to 10%); repeatable",
        ),
    ] = None,
    augment_first: Annotated[
        bool, typer.Option("--audio-augment", hidden=True, help="the same as --augment audio (the older spelling)")
    ] = False,
    outliers: Annotated[
        str | None,
        typer.Option(
            metavar="csv:PATH",
            help="outlier exposure: inputs that are none of the labels (a column per modality), each step's output on "
            "them trained towards uniform; `python -m benchmarks.avdigits.outliers` writes AV-digits' own",
        ),
    ] = None,
    outlier_weight: Annotated[
        float, typer.Option(min=0.0, help="weight of the outlier exposure loss (Hendrycks et al.: 0.5)")
    ] = 0.5,
    keep: Annotated[
        str,
        typer.Option(
            help="which epoch checkpoint.pt holds: best (the best validation accuracy by the method's own rule) or last"
        ),
    ] = "best",
    workers: Annotated[int, typer.Option(min=0, help="data-loading worker processes")] = 1,
    max_batches: Annotated[int | None, typer.Option(min=1, help="cap batches per epoch")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="MODALITY.KEY=VALUE",
            help="one of a modality's input settings (default: per encoder), as audio.clip_samples=32000; repeatable",
        ),
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="continue the run in this folder where it stopped (its own settings; others ignored)")
    ] = None,
    verbose: bool = False,
) -> None:
    """Train one method on a dataset; write RUN_DIR/checkpoint.pt, last.pt, metrics.jsonl and a curve plot."""
    _setup_logging(verbose)
    from training.checkpoint import CheckpointError
    from training.config import ENCODERS, KEEPS, METHODS, TrainConfig
    from training.data.specs import DataError
    from training.train import resume_run
    from training.train import train as run

    if method not in METHODS:
        _fail(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if encoder not in ENCODERS:
        _fail(f"unknown encoder {encoder!r}; choose from {', '.join(ENCODERS)}")
    if keep not in KEEPS:
        _fail(f"--keep takes {' or '.join(KEEPS)}, not {keep!r}")
    alpha: float | None = None
    if owm_alpha != "auto":
        try:
            alpha = float(owm_alpha)
        except ValueError:
            _fail(f"--owm-alpha takes a positive number or 'auto', not {owm_alpha!r}")
        if not alpha > 0:
            _fail(f"--owm-alpha must be positive, got {owm_alpha}")
    try:
        augment_settings = _input_settings(augment_set or [], "--augment-set", "audio.stretch=0.1")
    except ValueError as exc:
        _fail(str(exc))
    cfg = TrainConfig(
        method=method,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        owm_alpha=alpha,
        owm_project=not no_projection,
        augment=list(dict.fromkeys([*(augment or []), *(_older_augment() if augment_first else [])])),
        augment_settings=augment_settings,
        outliers=outliers,
        outlier_weight=outlier_weight,
        keep=keep,
        seed=seed,
        workers=workers,
        max_batches=max_batches,
    )
    try:
        overrides = {"inputs": _input_settings(set_ or [])}
    except ValueError as exc:
        _fail(str(exc))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=False) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(event: str, done: int, total: int) -> None:
            if event not in tasks:
                _, _, part = event.partition(":")  # "batch:alpha 10" while MLA searches its alpha
                label = "decoding" if event == "decode" else f"training {method}" + (f" ({part})" if part else "")
                tasks[event] = bar.add_task(label, total=total)
            bar.update(tasks[event], completed=done, total=total)

        try:
            result = resume_run(resume, progress) if resume is not None else run(data, out, cfg, encoder, overrides, progress)
        except (DataError, CheckpointError, ValueError) as exc:
            _fail(str(exc))
    if "best_validation" in result:
        saved = Path(result["run_dir"]) / "checkpoint.pt"
        chosen = (
            f"; alpha {result['owm_alpha']:g} chosen from {json.dumps(result['alpha_search'])}" if "owm_alpha" in result else ""
        )
        err.print(f"saved {saved}; the epoch kept, on validation: {json.dumps(result['best_validation'])}{chosen}")


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="a run directory (or its checkpoint.pt)")],
    data: DataOpt = "demo",
    split: Annotated[str, typer.Option(help="train | val | test")] = "test",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    workers: Annotated[int, typer.Option(min=1)] = 1,
    verbose: bool = False,
) -> None:
    """Score a trained run on a split: accuracy and macro-F1 per modality subset, per fusion rule."""
    _setup_logging(verbose)
    from training.checkpoint import CheckpointError
    from training.data.specs import DataError
    from training.evaluate import evaluate_run

    try:
        report = evaluate_run(run_dir, data, split, workers)
    except (DataError, CheckpointError) as exc:
        _fail(str(exc))
    if as_json:
        sys.stdout.write(json.dumps(report) + "\n")
        return
    from rich.table import Table

    subsets = list(report["accuracy"])
    title = f"{report['method']} on {split} (n={report['n']}): accuracy / ECE; its own rule is {report['fusion']}"
    table = Table(title=title)
    table.add_column("fusion (calibrated on val unless _raw)")
    for s in subsets:
        table.add_column(s, justify="right")
    for rule, res in report["by_fusion"].items():
        cells = (f"{res['accuracy'].get(s, float('nan')):.3f} / {res['ece'].get(s, float('nan')):.3f}" for s in subsets)
        table.add_row(f"[bold]{rule}[/]" if rule == report["fusion"] else rule, *cells)
    Console().print(table)
    a = report["abstention"]
    for sub, t in a["by_subset"].items():
        Console().print(
            f"{sub}: abstaining below {t['min_confidence']:.3f} (fitted on val for error rate {a['target_risk']:g}): "
            f"coverage {t['coverage']:.3f}, error rate among answers {t['risk']:.3f}"
        )
    Console().print(f"plots: {', '.join(report['plots'].values())}")


def _print_calibration(manifest: Manifest) -> None:
    """What was fitted on validation: temperatures, confidence maps, ECE and NLL before and after, abstention."""
    cal, abstain = manifest.fusion.calibration, manifest.fusion.abstention
    temps = ", ".join(f"{k} {v:.3g}" for k, v in {**cal.temperatures, **cal.fused_temperatures}.items())
    blend = (
        f", blended with the equal-weight mixture at {manifest.fusion.mixture_share:g}" if manifest.fusion.mixture_share else ""
    )
    err.print(f"fusion {manifest.fusion.rule}{blend}; temperatures {temps} (fitted on the {cal.fitted_on})")
    if manifest.fusion.conformal is not None:
        sets = manifest.fusion.conformal
        sizes = ", ".join(f"{k} {v.get('mean_set_size', float('nan')):.2f}" for k, v in sets.val.items())
        err.print(f"  prediction sets at {1 - sets.alpha:.0%}: mean size {sizes}")
    for m, d in (manifest.ood or {}).items():
        err.print(f"  {m}: out of distribution below {d.threshold:.3f} (kNN, k={d.k}; {d.fitted_on})")
    for m, choice in cal.temperature_choice.items():
        changes = "; ".join(f"{sub} {c[0]:+.4f} ({c[1]:+.4f} to {c[2]:+.4f})" for sub, c in choice.nll_change.items())
        verdict = "kept" if choice.kept else "not fitted (T = 1)"
        err.print(f"  {m}'s temperature {verdict}: NLL without it, leaving each of {choice.groups} speakers out: {changes}")
    for sub, cmap in cal.confidence_maps.items():
        err.print(
            f"  {sub}: confidence map sigmoid({cmap.slope:.3g} logit(c) + {cmap.offset:.3g}) on the top label "
            f"from {cmap.lowest:.3g} up, a straight line to the uniform answer below"
        )
    for sub, fig in cal.val.items():
        err.print(f"  {sub}: ECE {fig['ece_raw']:.3f} -> {fig['ece']:.3f}, NLL {fig['nll_raw']:.3f} -> {fig['nll']:.3f}")
    for sub, t in abstain.min_confidence.items():
        fig = abstain.val.get(sub, {})
        err.print(
            f"  {sub}: abstains below confidence {t:.3f}: on {fig.get('n', float('nan')):.0f} clips, "
            f"coverage {fig.get('coverage', float('nan')):.3f}, "
            f"error rate among answers {fig.get('risk', float('nan')):.3f} (bound {fig.get('risk_bound', float('nan')):.3f}, "
            f"target {abstain.target_risk:g}{_tests_made(fig, abstain.confidence)})"
        )


def _tests_made(fig: dict[str, float], confidence: float) -> str:
    """'; one of N tests, each at C%' for manifests that record SGR's tests (older ones record none)."""
    if "tests" not in fig:
        return ""
    tests = int(fig["tests"])
    return f"; one of {tests} tests, each at {100 * (1 - (1 - confidence) / tests):.1f}%"


TargetRisk = Annotated[
    float,
    typer.Option(help="abstention: the error rate allowed among the answers given, between 0 and 1 (default 5%)"),
]
RiskConfidence = Annotated[
    float,
    typer.Option(help="abstention: how sure the threshold must be of that rate on validation, between 0 and 1 (SGR)"),
]


Outliers = Annotated[
    str | None,
    typer.Option(
        help="csv:PATH of auxiliary outliers (`python -m benchmarks.avdigits.outliers` writes one): each modality they "
        "give gets a digit-or-not linear probe beside its kNN out-of-distribution detector"
    ),
]


@app.command("export")
def export_model(
    run_dir: Annotated[Path, typer.Argument(help="a run directory (or its checkpoint.pt)")],
    out: Annotated[Path, typer.Option("--out", help="model repository root")] = Path("models"),
    name: Annotated[str | None, typer.Option(help="model name (default: the run directory's name)")] = None,
    version: Annotated[str | None, typer.Option(help="version (default: the next integer)")] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="fp16 weights and activations; inputs/outputs stay fp32/uint8")] = False,
    opset: Annotated[int, typer.Option(min=17, max=23)] = 18,
    data: Annotated[str | None, typer.Option(help="dataset for parity and calibration (default: the one trained on)")] = None,
    fusion: Annotated[
        str | None,
        typer.Option(help="fusion rule to serve (default: logit_sum for joint, else loglinear)"),
    ] = None,
    target_risk: TargetRisk = 0.05,
    risk_confidence: RiskConfidence = 0.9,
    crossfit: Annotated[
        Path | None,
        typer.Option(
            help="a `python -m training.crossfit` folder: fit the calibration and abstention on its out-of-fold "
            "predictions (other speakers) pooled with validation's"
        ),
    ] = None,
    outliers: Outliers = None,
    verbose: bool = False,
) -> None:
    """Export a run as MODEL_DIR/<name>/<version>/: one ONNX graph per modality and manifest.json."""
    _setup_logging(verbose)
    from common.manifest import load_manifest
    from common.parity import ParityError
    from model_export.onnx_graph import ExportError
    from model_export.repository import export_run
    from training.checkpoint import CheckpointError
    from training.data.specs import DataError

    with err.status("exporting and checking parity"):
        try:
            target = export_run(
                run_dir, out, name, version, fp16, opset, data, fusion, target_risk, risk_confidence, crossfit, outliers
            )
        except (CheckpointError, ExportError, ParityError, DataError, ValueError) as exc:
            _fail(str(exc))
    manifest = load_manifest(target)
    for m, p in manifest.export.parity.items():
        rel = "" if p.max_rel_logit_diff is None else f" ({p.max_rel_logit_diff:.1e} of their scale)"
        err.print(f"{m}: max |logit diff| {p.max_abs_logit_diff:.2e}{rel}, top-1 agreement {p.top1_agreement:.4f} (n={p.n})")
    _print_calibration(manifest)
    err.print(f"exported {target}")


@app.command()
def calibrate(
    model_dir: Annotated[Path, typer.Argument(help="an exported version, MODEL_DIR/<name>/<version>")],
    data: Annotated[str | None, typer.Option(help="labelled data to fit on (default: the data it was trained on)")] = None,
    split: Annotated[str, typer.Option(help="the split of --data to fit on (never the one you test on)")] = "val",
    fusion: Annotated[str | None, typer.Option(help="fusion rule to serve (default: the one it serves now)")] = None,
    version: Annotated[str | None, typer.Option(help="the version to write (default: the next integer)")] = None,
    target_risk: TargetRisk = 0.05,
    risk_confidence: RiskConfidence = 0.9,
    crossfit: Annotated[
        Path | None,
        typer.Option(help="a `python -m training.crossfit` folder of its recipe: its out-of-fold predictions pooled in"),
    ] = None,
    verbose: bool = False,
) -> None:
    """Fit an exported model's calibration, fusion weights and abstention again, from its own graphs (no checkpoint),
    into a new version: a published version is never rewritten."""
    _setup_logging(verbose)
    from common.manifest import ManifestError, load_manifest
    from model_export.errors import ExportError
    from model_export.recalibrate import recalibrate  # no torch: it runs on a serve-only install
    from training.data.specs import DataError

    with err.status("running the graphs on the data and fitting"):
        try:
            target = recalibrate(model_dir, data, split, fusion, version, target_risk, risk_confidence, crossfit)
        except (ManifestError, ExportError, DataError, ValueError) as exc:
            _fail(str(exc))
    manifest = load_manifest(target)
    _print_calibration(manifest)
    err.print(f"calibrated {target}")


@app.command("refit-ood")
def refit_ood_command(
    model_dir: Annotated[Path, typer.Argument(help="an exported version, MODEL_DIR/<name>/<version>")],
    outliers: Outliers = None,
    crossfit: Annotated[
        Path | None,
        typer.Option(help="a `python -m training.crossfit` folder: thresholds that keep 95% of a new speaker's inputs"),
    ] = None,
    data: Annotated[str | None, typer.Option(help="the data it was trained on (default: the manifest's)")] = None,
    version: Annotated[str | None, typer.Option(help="the version to write (default: the next integer)")] = None,
    verbose: bool = False,
) -> None:
    """Fit an exported model's out-of-distribution detectors again from its own graphs and kNN banks, into a new
    version (graphs, banks and fusion copied unchanged): a published version is never rewritten."""
    _setup_logging(verbose)
    from common.manifest import ManifestError, PublishedError, load_manifest
    from model_export.errors import ExportError
    from model_export.recalibrate import refit_ood
    from training.data.specs import DataError

    with err.status("running the graphs on the data and fitting the detectors"):
        try:
            target = refit_ood(model_dir, outliers, crossfit, data, version)
        except (ManifestError, PublishedError, ExportError, DataError, ValueError, OSError) as exc:
            _fail(str(exc))
    for m, e in (load_manifest(target).ood or {}).items():
        err.print(f"{m}: {e.detector}, threshold {e.threshold:.4f}, validation kept {e.val.get('in_distribution', 0):.1%}")
    err.print(f"wrote {target}")


@app.command()
def validate(
    model_dir: Annotated[Path, typer.Argument(help="MODEL_DIR/<name>/<version>")],
) -> None:
    """Re-check a model repository: manifest schema, file hashes, parity on the stored sample."""
    from common.validate import InvalidRepositoryError, validate_repository

    try:
        report = validate_repository(model_dir)
    except InvalidRepositoryError as exc:
        _fail(str(exc), code=1)
    err.print(f"{model_dir}: valid ({report['name']} v{report['version']}); parity {json.dumps(report['parity'])}")


@app.command()
def serve(
    model: Annotated[Path | None, typer.Option("--model", help="model folder or version folder (default: MLA_MODEL_DIR)")] = None,
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
) -> None:
    """Serve a model repository over HTTP: POST /v1/predict, /v1/models, /metrics, /docs."""
    import uvicorn

    from common.manifest import ManifestError, load_manifest
    from service import http_edge
    from service.main import create_app
    from service.model import ModelLoadError, resolve_version_dir
    from service.settings import Settings

    settings = Settings() if model is None else Settings(model_dir=model)
    try:
        load_manifest(resolve_version_dir(settings.model_dir, settings.model_version))  # a clear error now, not a traceback later
    except (ModelLoadError, ManifestError, OSError) as exc:
        _fail(f"cannot serve {settings.model_dir}: {exc}")
    servers: list[uvicorn.Server] = []

    def stop() -> None:  # the warm-up failed: stop serving, exit non-zero below
        for server in servers:
            server.should_exit = True

    try:
        app_ = create_app(settings, on_fatal=stop)
        config = uvicorn.Config(
            app_,
            host=host,
            port=port,
            log_config=None,
            timeout_graceful_shutdown=int(settings.request_timeout_seconds) + 5,
            server_header=False,
            access_log=False,
            **http_edge.uvicorn_options(settings),  # header limits, a header deadline, a connection cap
        )
        servers.append(uvicorn.Server(config))
        servers[0].run()
    except ModelLoadError as exc:
        _fail(str(exc))
    if app_.state.failed is not None:
        _fail(f"start-up failed: {app_.state.failed}")
    if not servers[0].started:
        sys.exit(3)  # uvicorn's own exit code for a start-up that failed (the model did not load, say)


def _pairs(items: list[str], option: str) -> list[tuple[str, str]]:
    """`MODALITY=VALUE` items -> [(modality, value)], each modality at most once."""
    out: dict[str, str] = {}
    for item in items:
        modality, eq, value = item.partition("=")
        if not (eq and modality):
            _fail(f"{option} takes MODALITY=VALUE, as {option} image=digit.png; got {item!r}")
        if modality in out:
            _fail(f"{modality} is given twice")
        out[modality] = value
    return list(out.items())


@app.command()
def predict(
    url: Annotated[str, typer.Option(help="the service's base URL")] = "http://127.0.0.1:8000",
    file: Annotated[
        list[str] | None,
        typer.Option("--file", "-f", metavar="MODALITY=PATH", help="a file for one of the model's inputs; repeatable"),
    ] = None,
    value: Annotated[
        list[str] | None,
        typer.Option("--value", metavar="MODALITY=TEXT", help="text for an input that takes text, as text=sept; repeatable"),
    ] = None,
    borrow: Annotated[
        list[str] | None,
        typer.Option(
            "--borrow", metavar="MODALITY", help="take MODALITY from another input's file (audio: the video's audio track)"
        ),
    ] = None,
    audio: Annotated[Path | None, typer.Option(hidden=True, help="the same as --file audio=PATH")] = None,
    video: Annotated[Path | None, typer.Option(hidden=True, help="the same as --file video=PATH")] = None,
    use_video_audio: Annotated[bool, typer.Option("--use-video-audio", hidden=True, help="the same as --borrow audio")] = False,
    api_key: Annotated[str | None, typer.Option(envvar="MLA_API_KEY", help="API key, if the service wants one")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the JSON answer")] = False,
    version: Annotated[str | None, typer.Option(help="the model version to answer (default: the one serving)")] = None,
    timeout: float = 60.0,
) -> None:
    """Send any of a model's inputs (files, text) to a running service and print its prediction."""
    import contextlib

    import httpx

    from common.modalities import borrowing, kind

    paths = _pairs([*(file or []), *(f"{k}={p}" for k, p in vars_of(audio=audio, video=video))], "--file")
    values = _pairs(value or [], "--value")
    older = [target for flag, (target, _) in borrowing().items() if flag == "use_video_audio"]
    borrowed = list(dict.fromkeys([*(borrow or []), *(older if use_video_audio else [])]))
    if not paths and not values:
        _fail("give at least one input: --file MODALITY=PATH or --value MODALITY=TEXT")
    data: dict[str, str] = {}
    for m in borrowed:
        try:
            how = kind(m).borrow
        except ValueError as exc:
            _fail(str(exc))
        if how is None:
            _fail(f"{m} is never taken from another input's file")
        data[how[1]] = "true"
    if version is not None:
        data["version"] = version
    with contextlib.ExitStack() as stack:
        files: dict[str, tuple[str | None, Any]] = {}
        for m, p in paths:
            path = Path(p)
            if not path.is_file():
                _fail(f"{m}: {p} is not a file")
            files[m] = (path.name, stack.enter_context(path.open("rb")))
        for m, text in values:
            if m in files:
                _fail(f"{m} is given as a file and as a value")
            files[m] = (None, text.encode("utf-8"))
        headers = {"X-API-Key": api_key} if api_key else {}
        try:
            response = httpx.post(f"{url.rstrip('/')}/v1/predict", files=files, data=data, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            _fail(f"cannot reach {url}: {exc}")
    try:
        body = response.json()
    except ValueError:
        _fail(f"{url} answered {response.status_code} with a body that is not JSON")
    if response.status_code != 200:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        _fail(f"{response.status_code} {error.get('code', '')}: {error.get('message', body)}", code=1)
    if as_json:
        sys.stdout.write(json.dumps(body) + "\n")
        return
    from rich.table import Table

    reason = body.get("abstain_reason") or ("low_confidence" if body.get("abstained") else None)
    verdict = {
        None: "answered",
        "low_confidence": f"[bold yellow]abstained[/]: confidence below {body['min_confidence']:.3f}",
        "out_of_distribution": "[bold yellow]abstained[/]: no input sent is like the data the model was trained on",
    }.get(reason, f"[bold yellow]abstained[/]: {reason}")
    title = (
        f"{body['label']} (calibrated confidence {body['confidence']:.3f}; {verdict}) "
        f"from {body['model']['name']} v{body['model']['version']}"
        f"{' (manifest ' + body['model']['manifest_sha256'][:12] + ')' if body['model'].get('manifest_sha256') else ''}"
        f", {body['fusion']} fusion"
    )
    share = body.get("mixture_share")
    blended = share and len(body["modalities"]) > 1  # one modality's mixture is itself: nothing blended
    notes = [f"the product blended with the equal-weight mixture at {share:g}"] if blended else []
    left_out = [m for m, d in body["modalities"].items() if d.get("fused") is False]
    if left_out:
        notes.append(f"{', '.join(left_out)} left out of the fusion: unlike the data the model was trained on")
    table = Table(title=title, caption="; ".join(notes) or None)
    gated = any(isinstance(d.get("typicality"), int | float) for d in body["modalities"].values())
    checked = any(d.get("in_distribution") is not None for d in body["modalities"].values())
    # each modality's own calibrated confidence; the answer's (after fusion and any map) is in the title
    columns = ["modality", "label", "own confidence", "entropy (nats)", "weight", "temperature"]
    columns += ["typicality"] if gated else []
    columns += ["in distribution (score / threshold)"] if checked else []
    for col in columns:
        table.add_column(col)
    for m, d in body["modalities"].items():
        conf, temp = max(d["probabilities"].values()), d.get("temperature", 1.0)
        row = [m, d["label"], f"{conf:.3f}", f"{d['entropy']:.3f}", f"{d['weight']:.3f}", f"{temp:.3g}"]
        row += [f"{d['typicality']:.3f}"] if gated else []
        if checked:
            ok = d.get("in_distribution")
            row += ["-" if ok is None else f"{'yes' if ok else 'no'} ({d['ood_score']:.3f} / {d['ood_threshold']:.3f})"]
        table.add_row(*row)
    Console().print(table)


if __name__ == "__main__":
    app()
