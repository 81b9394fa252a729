"""Typer commands. Each is a thin layer over :mod:`deqkit.train`; deqkit's own errors become one line
``error: ...`` on stderr and a non-zero exit status (2 for usage errors), never a traceback."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from deqkit.cli.tables import fmt, key_value_table, path_lines, wrapped

try:  # typer >= 0.24 carries its own copy of click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer on click
    from click import exceptions as click_exceptions


class _Group(TyperGroup):
    """The ``deqkit`` group: usage errors (unknown option, missing argument, bad number) are one line,
    ``error: ... (see 'deqkit CMD --help')``, exit 2, as deqkit's own errors are, not a boxed panel."""

    def main(self, args: Any = None, prog_name: Optional[str] = None, complete_var: Optional[str] = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            code = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                                standalone_mode=False, **extra)
            code = code if isinstance(code, int) else 0
        except click_exceptions.UsageError as err:
            if type(err).__name__ == "NoArgsIsHelpError":  # bare `deqkit`: the help text
                err.show()
            else:
                where = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
                typer.echo("error: " + " ".join(err.format_message().split()) + where, err=True)
            code = err.exit_code
        except click_exceptions.ClickException as err:
            typer.echo("error: " + " ".join(err.format_message().split()), err=True)
            code = err.exit_code
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            code = 1
        if standalone_mode:
            sys.exit(code)
        return code


class _Command(TyperCommand):
    """A command whose flags show no value placeholder in --help (typer prints ``<bool>`` for them)."""

    def get_params(self, ctx: Any) -> list:
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


app = typer.Typer(
    name="deqkit",
    cls=_Group,
    help="Train, evaluate and diagnose fixed-point (DEQ / iterative refinement) models.\n\n"
         "An application is a folder with an APP object (see docs/applications.md); runs write a run "
         "directory (see docs/run_directory.md).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
)


def command(name: Optional[str] = None) -> Callable:
    """``@app.command`` with the flag-aware help of :class:`_Command`."""
    return app.command(name, cls=_Command)

APP_HELP = ("The checkpoint's application: a folder or a name (default: the installed or $DEQKIT_APPS application "
            "named in the checkpoint; a checkpoint never makes deqkit import code from a path it names).")
EVAL_SET_HELP = ("Change the checkpoint's config before building the model, e.g. --set iters=12 to iterate "
                 "longer at test time (repeatable); changes to the weights' shapes are errors.")
SET_HELP = ("Override a config value, e.g. --set train.lr=3e-4 --set hidden=64 (repeatable). Types follow the "
            "config dataclass; unknown keys are errors listing the valid ones.")


def _print_version(value: bool) -> None:
    if value:
        from deqkit.provenance import version_line

        typer.echo(version_line())
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                       help="Print the version and the git commit (when run from a checkout).")
          ) -> None:
    pass


def one_line_errors(command: Callable) -> Callable:
    """Print deqkit errors as ``error: ...`` and exit with their status instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from deqkit.errors import DeqkitError
        from deqkit.train.errors import exit_code

        try:
            return command(*args, **kwargs)
        except DeqkitError as err:
            typer.echo("error: " + " ".join(str(err).split()), err=True)
            raise typer.Exit(exit_code(err)) from None

    return wrapper


def _stdout() -> Console:
    return Console(file=sys.stdout, soft_wrap=False)


def _stderr() -> Console:
    return Console(file=sys.stderr)


# --------------------------------------------------------------------------------------------- train


@command()
@one_line_errors
def train(
    application: str = typer.Argument(..., metavar="APP",
                                      help="Application folder (e.g. examples/toy_deq) or name (e.g. toy_deq)."),
    preset: Optional[str] = typer.Option(None, help="Named preset of the application (default: its CPU preset)."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help=SET_HELP),
    out: Optional[Path] = typer.Option(None, help="Run directory (default: runs/<app>-<preset>-<time>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    device: Optional[str] = typer.Option(None, metavar="auto|cpu|cuda",
                                         help="Where to train (default: the config's train.device, auto)."),
    seed: Optional[int] = typer.Option(None, help="Random seed (same as --set train.seed=N)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar (warnings still print on stderr)."),
) -> None:
    """Train an application's model, writing checkpoints, metrics and pictures to a run directory.

    Works unchanged under [bold]torchrun --nproc-per-node N -m deqkit train ...[/] (data parallel; only rank 0 writes). Ctrl-C saves a checkpoint; continue with --resume.
    """
    from deqkit.cli.report import RichReporter
    from deqkit.train.application import load_application
    from deqkit.train.errors import UsageError
    from deqkit.train.run_dir import RunDir
    from deqkit.train.trainer import train as run_training

    the_app = load_application(application)
    sets = list(set_)
    if device is not None:
        sets.append(f"train.device={device}")
    if seed is not None:
        sets.append(f"train.seed={seed}")
    ckpt = None
    if resume:
        if out is None:
            raise UsageError("--resume needs --out, the run directory to continue")
        if preset is not None:
            raise UsageError("--preset cannot be combined with --resume (the run's config is in its "
                             "checkpoint); change values with --set")
        ckpt, config = _resume_point(the_app, RunDir(out), sets)
    else:
        config = the_app.make_config(preset, sets)
        preset = preset or the_app.default_preset
        if out is None:
            out = Path("runs") / f"{the_app.name}-{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = RunDir(out)
        if run_dir.holds_run():
            started = "" if run_dir.last.exists() else " (stopped before its first checkpoint: --resume restarts it " \
                                                        "from step 0 with its config.json)"
            raise UsageError(f"{out} already holds a run{started}; continue it with --resume or choose another --out")
    reporter = RichReporter(_stderr(), the_app.name, progress=not quiet)
    result = run_training(the_app, config, out, resume=ckpt, reporter=reporter, preset=preset)
    if result.out is None:  # not rank 0 of a distributed run
        return
    rows: dict[str, Any] = {"application": the_app.name, "steps": result.step,
                            "skipped steps": result.skipped_steps, "time": f"{result.elapsed:.1f} s",
                            "steps/s": result.steps_per_s}
    for key, value in result.metrics.items():
        rows[f"{result.eval_split} {key}"] = value
    for name, stats in result.solver.items():
        rows[f"{name} NFE"] = stats["nfe"]
        if "converged" in stats:
            rows[f"{name} converged"] = stats["converged"]
    console = _stdout()
    console.print(key_value_table("training finished", rows))
    console.print(path_lines({"run directory": result.out, "checkpoint": result.checkpoint,
                              "metrics": result.out / "metrics.jsonl", "images": result.out / "images"}),
                  soft_wrap=True, highlight=False, markup=False)


def _resume_point(the_app: Any, run_dir: Any, sets: list[str]) -> tuple[Any, Any]:
    """(checkpoint or None, config) to continue ``run_dir`` from: its last checkpoint, else its newest
    periodic one, else (a run killed before its first checkpoint) step 0 with its config.json."""
    from deqkit.train.checkpoint import load_checkpoint
    from deqkit.train.config import resolve_config
    from deqkit.train.errors import CheckpointError, ConfigError, UsageError
    from deqkit.train.restore import stored_config
    from deqkit.train.run_dir import read_config

    periodic = run_dir.periodic_checkpoints()
    source = run_dir.last if run_dir.last.exists() else (periodic[-1] if periodic else None)
    if source is not None:
        if source != run_dir.last:
            _warn(f"{run_dir.last} is missing: resuming from the newest periodic checkpoint {source.name}")
        ckpt = load_checkpoint(source, app=the_app.name)
        return ckpt, resolve_config(the_app.config_type, base=stored_config(the_app, ckpt, source), sets=sets)
    if not run_dir.config.exists():
        raise UsageError(f"nothing to resume in {run_dir.root}: no checkpoint and no config.json")
    saved = read_config(run_dir.config)
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise CheckpointError(f"nothing to resume: no checkpoint, and {run_dir.config} is unreadable")
    if saved.get("app") != the_app.name:
        raise CheckpointError(f"{run_dir.config} is a run of application '{saved.get('app')}', not '{the_app.name}'")
    try:
        base = resolve_config(the_app.config_type, overrides=saved["config"])
    except ConfigError as err:
        raise CheckpointError(f"{run_dir.config} holds an invalid config: {err}") from None
    _warn(f"{run_dir.root} has no checkpoint yet (the run stopped before its first one): starting it again "
          f"from step 0 with its config.json")
    return None, resolve_config(the_app.config_type, base=base, sets=sets)


def _warn(message: str) -> None:
    """A one-line warning on stderr (never hidden by -q: warnings say something is wrong)."""
    typer.echo("warning: " + " ".join(message.split()), err=True)


# ---------------------------------------------------------------------------------------------- eval


JSON_HELP = "Print the report as one JSON object on stdout instead of tables."
OUT_HELP = "Also write the JSON report to FILE (with or without --json)."


@command("eval")
@one_line_errors
def eval_(
    checkpoint: Path = typer.Argument(..., metavar="CHECKPOINT", help="A checkpoint (.safetensors) written by deqkit train"),
    split: str = typer.Option("test", help="Which split of the application's data to score."),
    batches: Optional[int] = typer.Option(None, min=1, help="Score only the first N batches."),
    json_: bool = typer.Option(False, "--json", help=JSON_HELP),
    out: Optional[Path] = typer.Option(None, "--out", metavar="FILE", help=OUT_HELP),
    device: str = typer.Option("cpu", metavar="cpu|cuda", help="Where to run the model."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help=EVAL_SET_HELP),
    app_spec: Optional[str] = typer.Option(None, "--app", metavar="FOLDER|NAME", help=APP_HELP),
) -> None:
    """Score a checkpoint with its application's metrics on a split."""
    from deqkit.train.evaluate import evaluate
    from deqkit.train.restore import restore
    from deqkit.train.trainer import pick_device
    from deqkit.train.distributed import Dist

    dev = pick_device(device, Dist())
    restored = restore(checkpoint, dev, set_, app=app_spec)
    _warn_nonfinite(restored.path, restored.nonfinite)
    values = evaluate(restored.app, restored.model, restored.config, split, dev, limit=batches)
    report = {"app": restored.app.name, "step": restored.checkpoint.step, "split": split, "metrics": values,
              **_provenance_keys(restored.checkpoint)}
    if _emit_json(report, json_, out, indent=None):
        return
    _stdout().print(key_value_table(f"{restored.app.name} @ step {restored.checkpoint.step}: {split}", values))


def _provenance_keys(checkpoint: Any = None) -> dict[str, Any]:
    """``provenance`` of this process (the scoring) and, for a checkpoint, ``trained_by``: the block the writing
    process stored in it (``null`` in older files; a resumed run's is its last segment's)."""
    from deqkit.provenance import provenance

    keys: dict[str, Any] = {"provenance": provenance()}
    if checkpoint is not None:
        keys["trained_by"] = checkpoint.provenance
    return keys


def _emit_json(report: dict[str, Any], to_stdout: bool, out: Optional[Path], indent: Optional[int] = 2) -> bool:
    """Write ``report`` to ``out`` (if given) and print it on stdout with ``--json``; True if it was printed."""
    if out is not None:
        from deqkit.train.errors import UsageError

        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2) + "\n")
        except OSError as err:
            raise UsageError(f"cannot write --out {out}: {err.strerror or err}") from None
    if to_stdout:
        typer.echo(json.dumps(report, indent=indent))
    return to_stdout


def _warn_nonfinite(path: Any, nonfinite: list[str]) -> None:
    if nonfinite:
        _warn(f"{path} holds non-finite weights ({len(nonfinite)} tensors, e.g. "
              f"{nonfinite[0]}): the numbers below describe a broken model")


# ------------------------------------------------------------------------------------------ diagnose


@command()
@one_line_errors
def diagnose(
    checkpoint: Optional[Path] = typer.Argument(
        None, metavar="[CHECKPOINT]", help="A checkpoint (.safetensors) written by deqkit train; or use --model"),
    batches: int = typer.Option(2, min=1, help="How many batches of the eval split to run (checkpoints)."),
    split: Optional[str] = typer.Option(None, help="Split to use (default: the run's train.eval_split)."),
    json_: bool = typer.Option(False, "--json", help=JSON_HELP),
    out: Optional[Path] = typer.Option(None, "--out", metavar="FILE", help=OUT_HELP + " Keys in docs/cli.md."),
    plots: Optional[Path] = typer.Option(None, metavar="DIR",
                                         help="Write PNGs: residual curves, spectral norm over training."),
    device: str = typer.Option("cpu", metavar="cpu|cuda", help="Where to run the model."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help=EVAL_SET_HELP),
    app_spec: Optional[str] = typer.Option(None, "--app", metavar="FOLDER|NAME", help=APP_HELP),
    model_spec: Optional[str] = typer.Option(
        None, "--model", metavar="MODULE:NAME",
        help="Instead of a checkpoint: a model deqkit did not train, e.g. mypkg.models:build (a module, or a "
             "function returning one; imported like python -m) or model.py:build."),
    weights: Optional[Path] = typer.Option(None, metavar="FILE",
                                           help="With --model: a safetensors state dict to load into it."),
    batch_files: list[Path] = typer.Option(
        [], "--batch", metavar="FILE",
        help="With --model: a safetensors file holding one batch (repeatable: one batch per file); tensors "
             "named 0, 1, ... are passed as model(*batch), other names as model(**batch)."),
    loss_spec: Optional[str] = typer.Option(
        None, "--loss", metavar="MODULE:NAME",
        help="With --model: loss(model, batch) -> scalar, for the Neumann(1)-vs-IFT gradient cosine."),
) -> None:
    """Solver and gradient health of every fixed-point layer of a checkpoint's model, or of any model (--model).

    Residual after each iteration, NFE, converged fraction (with the tolerance and stop mode), spectral norm and
    radius of df/dz at the fixed point, and the cosine between the Neumann(1) and the exact IFT gradient of the
    loss, each with a one-line reading.
    """
    from deqkit.train.distributed import Dist
    from deqkit.train.diagnose import write_plots
    from deqkit.train.trainer import pick_device

    dev = pick_device(device, Dist())
    if model_spec is not None:
        report, title, metrics_file = _diagnose_model(checkpoint, model_spec, weights, batch_files, loss_spec, dev,
                                                      given={"--batches": batches != 2, "--split": split,
                                                             "--set": set_, "--app": app_spec})
    else:
        report, title, metrics_file = _diagnose_checkpoint(checkpoint, batches, split, set_, app_spec, dev,
                                                           given={"--weights": weights, "--batch": batch_files,
                                                                  "--loss": loss_spec})
    printed = _emit_json(report, json_, out)
    if not printed:
        _print_report(_stdout(), report, title)
    for path in write_plots(report, plots, metrics_file) if plots is not None else []:
        typer.echo(f"wrote {path}", err=printed)  # stdout holds the JSON with --json


def _refuse(given: dict[str, Any], mode: str) -> None:
    for option, value in given.items():
        if value:
            from deqkit.train.errors import UsageError

            raise UsageError(f"{option} does not apply to {mode}")


def _diagnose_checkpoint(checkpoint: Optional[Path], batches: int, split: Optional[str], sets: list[str],
                         app_spec: Optional[str], dev: Any, given: dict[str, Any]) -> tuple[dict, str, Path]:
    from deqkit.train.diagnose import diagnose as run_diagnose
    from deqkit.train.errors import UsageError
    from deqkit.train.restore import restore

    if checkpoint is None:
        raise UsageError("diagnose needs a CHECKPOINT, or --model MODULE:NAME with --batch FILE")
    _refuse(given, "a checkpoint (they go with --model)")
    restored = restore(checkpoint, dev, sets, app=app_spec)
    _warn_nonfinite(restored.path, restored.nonfinite)
    report = {**run_diagnose(restored, batches=batches, split=split, device=dev),
              **_provenance_keys(restored.checkpoint)}
    title = f"{restored.app.name} @ step {report['step']}: {report['split']} ({report['samples']} samples)"
    return report, title, restored.path.parent.parent / "metrics.jsonl"


def _diagnose_model(checkpoint: Optional[Path], spec: str, weights: Optional[Path], batch_files: list[Path],
                    loss_spec: Optional[str], dev: Any, given: dict[str, Any]) -> tuple[dict, str, None]:
    """``--model``: build the model the user names, load ``--weights``, diagnose it on the ``--batch`` files."""
    from deqkit.cli.model_spec import build_model, import_object, load_batch, load_weights
    from deqkit.diagnostics.report import diagnose_batches
    from deqkit.train.data import to_device
    from deqkit.train.errors import UsageError

    if checkpoint is not None:
        raise UsageError("give either a CHECKPOINT or --model, not both")
    _refuse(given, "--model (they read a checkpoint's application)")
    if not batch_files:
        raise UsageError("--model needs --batch FILE (a safetensors file holding one batch)")
    loss_fn = import_object(loss_spec, "--loss") if loss_spec is not None else None
    if loss_fn is not None and not callable(loss_fn):
        raise UsageError(f"--loss {loss_spec} must name a function loss(model, batch) -> scalar tensor")
    model = build_model(spec)
    nonfinite = load_weights(model, weights) if weights is not None else []
    _warn_nonfinite(weights, nonfinite)
    model.to(dev)
    loaded = [to_device(load_batch(path), dev) for path in batch_files]
    report = {"model": spec, "weights": str(weights) if weights is not None else None,
              "batch_files": [str(p) for p in batch_files], **diagnose_batches(model, loaded, loss_fn),
              **_provenance_keys()}
    return report, f"{spec}: {report['batches']} batch(es), {report['samples']} samples", None


def _print_report(console: Console, report: dict[str, Any], title: str) -> None:
    """The diagnose tables: one column per fixed point, each's residual curve, then the readings."""
    from rich.markup import escape

    table = Table(title=title, title_justify="left")
    table.add_column("fixed point")
    names = list(report["fixed_points"])
    for name in names:
        table.add_column(name, justify="right")
    fps = report["fixed_points"]
    table.add_row("solver", *(fps[n]["solver"] for n in names))
    table.add_row("tolerance (stop mode)", *(_tolerance(fps[n]) for n in names))
    rows = [("NFE (mean)", "nfe"), ("converged fraction", "converged"), ("residual mean", "residual_mean"),
            ("residual max", "residual_max"), ("spectral norm ‖J‖₂ mean", "spectral_norm_mean"),
            ("spectral norm ‖J‖₂ max", "spectral_norm_max"),
            ("spectral radius ρ(J) mean", "spectral_radius_mean"),
            ("spectral radius ρ(J) max", "spectral_radius_max")]
    for label, key in rows:
        table.add_row(label, *("n/a (tol=None)" if key == "converged" and fps[n]["fixed_count"]
                               else fmt(fps[n][key]) for n in names))
    console.print(table)
    for name, fp in fps.items():
        curve = Table(title=f"{name}: residual after each iteration", title_justify="left")
        curve.add_column("iteration", justify="right")
        curve.add_column("mean", justify="right")
        curve.add_column("max", justify="right")
        for i, (mean, worst) in enumerate(zip(fp["residual_curve_mean"], fp["residual_curve_max"]), start=1):
            curve.add_row(str(i), fmt(mean), fmt(worst))
        console.print(curve)
    for name, fp in fps.items():
        console.print(f"[bold]{escape(name)}[/] reads:", highlight=False)
        for key in ("converged", "spectral_radius", "spectral_norm"):
            console.print(wrapped(fp["readings"][key], console.width, "    ", "  - "), highlight=False,
                          markup=False, soft_wrap=True)
    spread = ""
    if report["gradient_cosine_min"] is not None and len(report["gradient_cosine_per_batch"]) > 1:
        spread = (f" (min {fmt(report['gradient_cosine_min'])}, max {fmt(report['gradient_cosine_max'])}, "
                  f"sd {fmt(report['gradient_cosine_sd'])} over {len(report['gradient_cosine_per_batch'])} batches)")
    console.print(f"cosine(Neumann(1) gradient, IFT gradient) of the loss: [bold]{fmt(report['gradient_cosine'])}[/]"
                  f"{spread}", highlight=False)
    console.print(wrapped(report["gradient_cosine_reading"], console.width, "  "), highlight=False, markup=False,
                  soft_wrap=True)


def _tolerance(fp: dict[str, Any]) -> str:
    if fp["fixed_count"]:
        return f"none: {fp['max_iter']} iterations"
    return f"{fp['tol']:g} ({fp['stop_mode']}), max_iter {fp['max_iter']}"


# ---------------------------------------------------------------------------------------------- apps


@command()
@one_line_errors
def apps() -> None:
    """List the applications you can name: folders in $DEQKIT_APPS, ./applications, ./examples and the
    source checkout, and installed ones (entry point group deqkit.applications)."""
    from rich.markup import escape

    from deqkit.train.application import discover, search_roots

    console = _stdout()
    blocks = []
    for path, found in discover():
        if isinstance(found, str):
            if "does not define APP" in found:
                continue  # a helper package, not an application
            blocks.append((getattr(path, "name", str(path)), "cannot load", path, found))
            continue
        presets = [found.default_preset] + [p for p in found.presets if p != found.default_preset]
        blocks.append((found.name, "presets " + ", ".join(presets), path, found.description))
    if not blocks:
        roots = ", ".join(str(r) for r in search_roots()) or "none exist"
        typer.echo(f"no applications found (searched: {roots})")
        return
    for name, presets, path, description in blocks:
        # one block per application: the name and folder whole on their own lines, the description wrapped
        console.print(f"[bold]{escape(name)}[/]  ({escape(presets)})", soft_wrap=True, highlight=False)
        console.print(f"  folder: {path}", soft_wrap=True, highlight=False, markup=False)
        if description:
            console.print(wrapped(description, console.width, "  "), soft_wrap=True, highlight=False, markup=False)


# --------------------------------------------------------------------------------------------- bench


@command()
@one_line_errors
def bench(
    application: str = typer.Argument(..., metavar="APP", help="Application folder or name."),
    preset: Optional[str] = typer.Option(None, help="Preset to measure (default: the CPU preset)."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help=SET_HELP),
    steps: int = typer.Option(50, min=1, help="Timed steps per measurement (after 5 warm-up steps)."),
    threads: str = typer.Option("1,2", help="Comma-separated torch thread counts to compare."),
    json_: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Steps/s of training with and without the model (data only), for each thread count.

    If the data-only rate is not far above the training rate, data loading is the bottleneck.
    """
    from deqkit.train.application import load_application
    from deqkit.train.bench import measure

    the_app = load_application(application)
    config = the_app.make_config(preset, set_)
    try:
        counts = [int(t) for t in threads.split(",") if t.strip()]
    except ValueError:
        from deqkit.train.errors import UsageError

        raise UsageError(f"--threads expects comma-separated integers, got {threads!r}") from None
    results = [measure(the_app, config, steps=steps, threads=n) for n in counts]
    if json_:
        typer.echo(json.dumps(results))
        return
    table = Table(title=f"{the_app.name} ({preset or the_app.default_preset}): "
                        f"batch {config.train.batch_size}", title_justify="left")
    for column in ("threads", "data only (steps/s)", "training (steps/s)", "data share of a step"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(str(r["threads"]), fmt(r["data_steps_per_s"]), fmt(r["train_steps_per_s"]),
                      f"{100 * r['train_steps_per_s'] / r['data_steps_per_s']:.1f}%")
    _stdout().print(table)


class _Interrupted(BaseException):
    """Ctrl-C outside the training loop; a BaseException so that it passes click's own KeyboardInterrupt
    handling (an "Aborted!" and exit 1) and reaches :func:`main`."""


def _on_first_sigint(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGINT, _on_second_sigint)  # a second Ctrl-C while unwinding leaves at once
    raise _Interrupted


def _on_second_sigint(signum: int, frame: Any) -> None:
    os.write(2, b"error: interrupted\n")
    os._exit(130)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``deqkit = deqkit.cli:main``).

    Ctrl-C outside training (e.g. while torch imports) prints ``error: interrupted`` and exits 130, never a
    traceback; during training the trainer's own handler saves a checkpoint first (see docs/cli.md).
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_first_sigint)
    try:
        app(args=argv, prog_name="deqkit")
    except (_Interrupted, KeyboardInterrupt):
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the interpreter's shutdown (atexit) runs in peace
        typer.echo("error: interrupted", err=True)
        sys.exit(130)
