"""The ``frip`` command line. Errors map to messages and exit codes in ``main``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table
from typer.core import TyperGroup

from frip_engine import plugins
from frip_engine.ckks import PRESETS
from frip_engine.cli_audit import audit_key_event, audited_subjects
from frip_engine.cli_eval import add_bench_commands, eval_app
from frip_engine.cli_output import (
    err,
    out,
    progress_bar,
    quit_on_broken_pipe,
    shown,
    stdout_closed,
    styled,
)
from frip_engine.cli_serve import add_serve_commands
from frip_engine.errors import (
    FripError,
    InputError,
    KeyStoreError,
    MissingFileError,
    ProfileError,
    SubjectError,
)


class _Commands(TyperGroup):
    """The top command group: output into a closed pipe ends the run quietly."""

    def invoke(self, ctx: Any) -> Any:  # typer.Context (typer vendors click)
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            if not stdout_closed():
                raise  # another pipe (a worker's): a real failure
            quit_on_broken_pipe()  # typer.echo's JSON (Rich's consoles call it themselves)


app = typer.Typer(
    cls=_Commands,
    help="frip-engine: 1:N face identification over a CKKS-encrypted gallery.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
engine_app = typer.Typer(help="Create, list and show engines.", no_args_is_help=True)
app.add_typer(engine_app, name="engine")
bench_app = typer.Typer(
    help="Benchmarks: print, and save JSON, Markdown and PNG.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")
keys_app = typer.Typer(
    help="HE key lifecycle: init, status, rotate-kek, rotate-he.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")
app.add_typer(eval_app, name="eval")
add_bench_commands(bench_app)  # frip bench extract
add_serve_commands(app)  # frip serve, frip vendors, frip audit

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", envvar="FRIP_HOME", help="Where engines live (default: $FRIP_HOME)."),
]


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _print_mapping(data: dict[str, Any], title: str, as_json: bool) -> None:
    """A flat report: JSON for scripts, a two-column table for people."""
    if as_json:
        _print_json(data)
        return
    table = Table(title=title, show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in data.items():
        table.add_row(key, _human(value))
    out.print(table)


def _human(value: Any) -> str:
    """A report value for people: tables as JSON, large floats as whole numbers with
    thousands separators (bytes), small ones to 6 significant digits (thresholds)."""
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.6g}"
    return str(value)


# ---------------------------------------------------------------------------- plugins
@app.command("plugins")
def plugins_command(as_json: JsonOpt = False) -> None:
    """List every plugin component by kind, with package, version and availability."""
    reg = plugins.registry()
    rows: list[dict[str, Any]] = [
        {
            "kind": c.kind,
            "name": c.name,
            "plugin": c.plugin,
            "package": c.package,
            "version": c.version,
            "available": c.available,
            "install": c.install_hint(),
            "summary": c.summary,
        }
        for kind in plugins.KINDS
        for c in reg.of_kind(kind)
    ]
    broken = [b.__dict__ for b in reg.broken]
    if as_json:
        _print_json({"components": rows, "broken": broken})
        return
    table = Table(title="frip-engine plugins", box=box.SIMPLE_HEAD)
    table.add_column("kind / name, package", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("summary", ratio=1, overflow="fold")
    for kind in plugins.KINDS:
        of_kind = [row for row in rows if row["kind"] == kind]
        if of_kind:
            table.add_row(styled((kind, "bold")))
        for row in of_kind:
            status = styled(("ok", "green") if row["available"] else ("missing", "red"))
            package = f"  {row['package']} {row['version']}"
            table.add_row(styled(f"  {row['name']}\n", (package, "dim")), status, row["summary"])
    out.print(table)
    for row in rows:
        if not row["available"]:
            out.print(f"to install {row['kind']} {row['name']}: {row['install']}")
    for b in broken:
        err.print(
            styled(
                ("broken plugin", "red"),
                f" {b['name']} ({b['package']} {b['version']}): {b['error']}",
            )
        )


# ---------------------------------------------------------------------------- engines
@engine_app.command("create")
def engine_create(
    name: str,
    profile: Annotated[Path | None, typer.Option(help="Engine profile TOML to start from.")] = None,
    extractor: Annotated[str | None, typer.Option(help="Extractor plugin.")] = None,
    he: Annotated[str | None, typer.Option(help="HE backend plugin.")] = None,
    preset: Annotated[str | None, typer.Option(help=f"CKKS preset: {', '.join(PRESETS)}.")] = None,
    key_store: Annotated[str | None, typer.Option(help="Key store plugin.")] = None,
    threshold: Annotated[float | None, typer.Option(help="Decision threshold (cosine).")] = None,
    home: HomeOpt = None,
) -> None:
    """Create an engine: validate the profile, generate HE keys, make an empty gallery."""
    from frip_engine.engine import Engine
    from frip_engine.profile import Profile, check_name, read_profile_file
    from frip_engine.validate import check_threshold

    check_name(name)
    if threshold is not None:
        check_threshold(threshold)
    data: dict[str, Any] = {}
    if profile is not None:
        data = read_profile_file(profile)
        if not isinstance(data.setdefault("engine", {}), dict):
            raise ProfileError(f"{profile}: [engine] must be a table")
        data["engine"].pop("id", None)  # a new engine gets a new id
    data.setdefault("engine", {})["name"] = name
    for section, value in (("extractor", extractor), ("he", he), ("key_store", key_store)):
        if value:
            data.setdefault(section, {})["plugin"] = value
    if preset:
        data.setdefault("he", {})["preset"] = preset
    if threshold is not None:
        data["engine"]["threshold"] = threshold
    source = f"{profile} (with the command line's options)" if profile else "command line"
    engine = Engine.create(Profile.from_dict(data, source), home)
    with engine:
        out.print(styled("created engine ", (name, "bold"), f" in {engine.directory}"))
        out.print(
            f"  {engine.parts.backend.description}; key store: {engine.parts.key_store.describe()}"
        )
        stats = engine.stats()
        out.print(f"  threshold {stats['threshold']}: {stats['threshold_source']}", markup=False)


@engine_app.command("list")
def engine_list(as_json: JsonOpt = False, home: HomeOpt = None) -> None:
    """List the engines under the home folder."""
    from frip_engine.engine import duplicate_engines, list_engines

    names = list_engines(home)
    for name, others in sorted(duplicate_engines(home).items()):
        listed = ", ".join(f"'{other}'" for other in others)
        err.print(
            f"warning: engine '{name}' has the same engine id as {listed}: key rotations are "
            "refused until the copy is moved out of FRIP_HOME (frip keys status says more)",
            style="yellow",
            highlight=False,
            markup=False,
        )
    if as_json:
        _print_json(names)
    elif not names:
        out.print("no engines yet: frip engine create NAME")
    else:
        for name in names:
            out.print(name)


@engine_app.command("show")
def engine_show(name: str, as_json: JsonOpt = False, home: HomeOpt = None) -> None:
    """Show an engine's profile and gallery statistics."""
    stats_command(name, as_json, home)


# ---------------------------------------------------------------------------- enrolment
@app.command("enrol")
def enrol_command(
    engine_name: Annotated[str, typer.Argument(metavar="ENGINE")],
    subject: Annotated[
        str | None, typer.Option(help="Subject id (with --image/--embedding).")
    ] = None,
    image: Annotated[
        list[Path] | None, typer.Option(help="Image of the subject (repeatable).")
    ] = None,
    embedding: Annotated[Path | None, typer.Option(help="Embedding file (.npy/.json).")] = None,
    folder: Annotated[Path | None, typer.Option(help="Folder of <identity>/<images>.")] = None,
    index: Annotated[Path | None, typer.Option(help="CSV with path,identity columns.")] = None,
    images_per_subject: Annotated[
        int | None, typer.Option(help="Use at most this many images per identity.")
    ] = None,
    skip_existing: Annotated[bool, typer.Option(help="Skip subjects already enrolled.")] = False,
    as_json: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Enrol one subject, a folder or an index CSV (one template per subject).

    One subject that fails is one error line (3 for a missing image, else 2); a folder or
    an index enrols every subject it can and exits 2 when any failed, each listed on
    stderr."""
    from frip_engine.datasets import csv_identities, folder_identities
    from frip_engine.embeddings import read_embedding_file
    from frip_engine.engine import Engine, EnrolItem

    sources = sum(x is not None for x in (subject, folder, index))
    if sources != 1:
        raise InputError("give exactly one of --subject, --folder or --index")
    if images_per_subject is not None and images_per_subject < 1:
        raise InputError(f"--images-per-subject {images_per_subject} must be at least 1")
    with Engine.open(engine_name, home) as engine:
        items: list[EnrolItem]
        if subject is not None:
            if not image and embedding is None:
                raise InputError("--subject needs --image and/or --embedding")
            for path in image or []:
                if not path.is_file():
                    raise MissingFileError(f"image {path} does not exist")
            vectors = (
                [read_embedding_file(embedding, engine.parts.extractor.dimension)]
                if embedding
                else []
            )
            items = [EnrolItem(subject, images=list(image or []), embeddings=vectors)]
        else:
            found = folder_identities(folder) if folder else csv_identities(index)  # type: ignore[arg-type]
            items = [EnrolItem(k, images=list(v[:images_per_subject])) for k, v in found.items()]
        if skip_existing:
            have = {s.subject_id for s in engine.store.subjects()}
            items = [i for i in items if i.subject_id not in have]
        subjects = [item.subject_id for item in items]
        with (
            audited_subjects(engine, "enrol", subjects) as not_done,
            progress_bar(as_json) as bar,
        ):
            task = bar.add_task("extracting and encrypting", total=len(items))
            report = engine.enrol_many(items, progress=lambda _s: bar.advance(task))
            not_done.update(report.failed)
    if subject is not None and report.failed:
        raise SubjectError(f"cannot enrol subject {shown(subject)}: {report.failed[subject]}")
    if as_json:
        _print_json(report.summary())
    else:
        out.print(f"enrolled {len(report.enrolled)} subject(s) into {engine_name}")
        for sid, notes in report.notes.items():
            for note in notes:
                out.print(styled("  ", (shown(sid), "yellow"), f": {note}"))
        for sid, why in report.failed.items():
            err.print(styled(("not enrolled", "red"), f" {shown(sid)}: {why}"))
    if report.failed:
        raise typer.Exit(InputError.exit_code)


# ---------------------------------------------------------------------------- matching
def _probe_args(
    engine: Any,
    image: Path | None,
    embedding: Path | None,
    template: Path | None,
    adapter: str | None,
) -> dict[str, Any]:
    from frip_engine.embeddings import read_embedding_file

    given = sum(x is not None for x in (image, embedding, template))
    if given != 1:
        raise InputError("give exactly one probe: IMAGE, --embedding FILE or --template FILE")
    if image is not None:
        return {"image": image}
    if embedding is not None:
        return {"embedding": read_embedding_file(embedding, engine.parts.extractor.dimension)}
    if adapter is None:
        raise InputError("--template needs --adapter NAME (see frip plugins)")
    assert template is not None
    if not template.is_file():
        raise MissingFileError(f"template file {template} does not exist")
    decoded = plugins.create("adapter", adapter).decode(template.read_bytes())
    return {"embedding": decoded}


def _show_decision(decision: Any, as_json: bool, one_to_one: bool = False) -> None:
    if as_json:
        _print_json(decision.to_dict())
        return
    limit = decision.threshold
    if decision.matched:
        score = decision.score
        out.print(
            styled(("match", "green"), f" {decision.subject_id} (score {score:.4f} >= {limit:g})")
        )
    elif decision.score is None:
        out.print(styled(("no match", "red"), f": engine {decision.engine} is empty"))
    else:
        which = "score" if one_to_one else "best score"
        out.print(
            styled(("no match", "red"), f" ({which} {decision.score:.4f} < threshold {limit:g})")
        )
    for note in decision.notes:
        out.print(styled("  ", ("note", "yellow"), f": {note}"))
    if len(decision.candidates) > 1:
        for rank, c in enumerate(decision.candidates, 1):
            out.print(f"  {rank}. {c.subject_id}  {c.score:.4f}")
    scope = f"{decision.registrants} registrant(s), {decision.blocks_scored} block(s)"
    title = f"timings over {scope}"
    table = Table(title=title, min_width=len(title) + 4)  # the title on one line
    table.add_column("stage")
    table.add_column("ms", justify="right")
    for stage, seconds in decision.timings.items():
        table.add_row(stage, f"{seconds * 1000:.1f}")
    out.print(table)


ImageArg = Annotated[Path | None, typer.Argument(help="Probe image.")]
EmbeddingOpt = Annotated[Path | None, typer.Option(help="Probe embedding file (.npy/.json).")]
TemplateOpt = Annotated[Path | None, typer.Option(help="Vendor template file (with --adapter).")]
AdapterOpt = Annotated[str | None, typer.Option(help="Adapter that decodes --template.")]
ThresholdOpt = Annotated[float | None, typer.Option(help="Override the engine's threshold.")]


@app.command("identify")
def identify_command(
    engine_name: Annotated[str, typer.Argument(metavar="ENGINE")],
    image: ImageArg = None,
    embedding: EmbeddingOpt = None,
    template: TemplateOpt = None,
    adapter: AdapterOpt = None,
    top_k: Annotated[int, typer.Option(help="How many candidates to return.")] = 1,
    threshold: ThresholdOpt = None,
    probe_clusters: Annotated[
        str | None, typer.Option(help="Clusters to search (a number or 'all'); default: profile.")
    ] = None,
    as_json: JsonOpt = False,
    home: HomeOpt = None,
    probes: Annotated[
        Path | None,
        typer.Option(help="A folder or CSV of probes, identified in batches; one line each."),
    ] = None,
) -> None:
    """1:N: who is this, if anyone enrolled?"""
    from frip_engine.engine import Engine

    fan_out: int | str | None = probe_clusters
    if probe_clusters is not None and probe_clusters != "all":
        if not (probe_clusters.isascii() and probe_clusters.isdigit()):
            raise InputError(f"--probe-clusters takes a number or 'all', not {probe_clusters!r}")
        fan_out = int(probe_clusters)
    if probes is not None:
        from frip_engine.cli_batch import identify_probes

        single = (image, embedding, template)
        identify_probes(engine_name, probes, single, top_k, threshold, fan_out, as_json, home)
        return
    with Engine.open(engine_name, home) as engine:
        probe = _probe_args(engine, image, embedding, template, adapter)
        decision = engine.identify(
            top_k=top_k, threshold=threshold, probe_clusters=fan_out, **probe
        )
    _show_decision(decision, as_json)


@app.command("verify")
def verify_command(
    engine_name: Annotated[str, typer.Argument(metavar="ENGINE")],
    subject: Annotated[str, typer.Argument(help="Claimed subject id.")],
    image: ImageArg = None,
    embedding: EmbeddingOpt = None,
    template: TemplateOpt = None,
    adapter: AdapterOpt = None,
    threshold: ThresholdOpt = None,
    as_json: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """1:1: is this the claimed subject?"""
    from frip_engine.engine import Engine

    with Engine.open(engine_name, home) as engine:
        probe = _probe_args(engine, image, embedding, template, adapter)
        decision = engine.verify(subject, threshold=threshold, **probe)
    _show_decision(decision, as_json, one_to_one=True)


@app.command("remove")
def remove_command(
    engine_name: Annotated[str, typer.Argument(metavar="ENGINE")],
    subject: str,
    home: HomeOpt = None,
) -> None:
    """Erase a subject from the encrypted gallery (re-encrypts its block without it)."""
    from frip_engine.engine import Engine

    with (
        Engine.open(engine_name, home) as engine,
        audited_subjects(engine, "remove", [subject]),
    ):
        engine.remove(subject)
    out.print(f"removed {subject} from {engine_name}: its slot now encrypts zeros")


@app.command("stats")
def stats_command(
    engine_name: Annotated[str, typer.Argument(metavar="ENGINE")],
    as_json: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Gallery size, blocks, bytes per subject, plugins and parameters."""
    from frip_engine.engine import Engine

    with Engine.open(engine_name, home) as engine:
        stats = engine.stats()
    _print_mapping(stats, f"engine {engine_name}", as_json)


@app.command("demo")
def demo_command(
    data: Annotated[
        Path | None, typer.Option(help="lfw-dev folder (default: ../shared/data/lfw-dev).")
    ] = None,
    output: Annotated[Path, typer.Option(help="Where results JSON and plots go.")] = Path(
        "results/demo"
    ),
    preset: Annotated[str, typer.Option(help="CKKS preset for the encrypted engine.")] = "fast",
) -> None:
    """Enrol lfw-dev's 200 identities, identify the rest and 120 unknowns; compare to plaintext."""
    from frip_engine.demo import run_demo

    run_demo(data, output, preset, out)


# ---------------------------------------------------------------------------- benchmarks
@bench_app.command("cluster")
def bench_cluster(
    sizes: Annotated[
        str, typer.Option(help="Gallery sizes, comma-separated.")
    ] = "500,10000,100000",
    probe_clusters: Annotated[str, typer.Option(help="Fan-outs p to try.")] = "1,2,4,8,all",
    timed_probes: Annotated[int, typer.Option(help="Probes timed with TenSEAL per setting.")] = 10,
    data: Annotated[Path | None, typer.Option(help="lfw-dev folder.")] = None,
    output: Annotated[Path, typer.Option(help="Where results go.")] = Path("results/bench"),
    preset: Annotated[str, typer.Option(help="CKKS preset.")] = "fast",
) -> None:
    """Routed (k-means, top-p) vs exhaustive search: latency, rank-1, FNIR, cluster sizes."""
    from frip_engine.bench_cluster import run

    try:
        counts = [int(s) for s in sizes.split(",")]
        fans: list[int | str] = [p if p == "all" else int(p) for p in probe_clusters.split(",")]
    except ValueError as exc:
        raise InputError(
            f"--sizes and --probe-clusters take comma-separated numbers: {exc}"
        ) from exc
    if min(counts) < 250:
        raise InputError("gallery sizes must be at least 250 (lfw-dev enrols 200 people)")
    run(counts, fans, timed_probes, data, output, preset, out)


@bench_app.command("he")
def bench_he(
    max_n: Annotated[int, typer.Option(help="Largest gallery of the scale sweep.")] = 100_000,
    quick: Annotated[bool, typer.Option(help="Tiny galleries, two configs (smoke test).")] = False,
    workers: Annotated[int, typer.Option(help="Scoring processes per engine.")] = 1,
    probes: Annotated[int, typer.Option(help="Timed identifies per gallery size.")] = 10,
    only: Annotated[
        str | None, typer.Option(help="Comma-separated words: run configs whose label has one.")
    ] = None,
    data: Annotated[Path | None, typer.Option(help="lfw-dev folder.")] = None,
    results: Annotated[Path, typer.Option(help="Where the JSON goes.")] = Path("results"),
    docs: Annotated[Path, typer.Option(help="Where the Markdown and PNGs go.")] = Path("docs"),
) -> None:
    """HE backends x layouts x presets x probe modes vs numpy and faiss: Table II, latency
    up to --max-n registrants, bytes, enrolment rate, ratios, targets, decision equality."""
    from frip_engine.bench_he import Options, run

    if max_n < 300 or workers < 1 or probes < 1:
        raise InputError("--max-n must be at least 300, --workers and --probes at least 1")
    words = tuple(w.strip() for w in only.split(",") if w.strip()) if only else ()
    options = Options(
        max_n, quick, workers, probes, data=data, results=results, docs=docs, only=words
    )
    run(options, out)


# ---------------------------------------------------------------------------- keys
EngineArg = Annotated[str, typer.Argument(metavar="ENGINE")]


@keys_app.command("init")
def keys_init(
    engine_name: EngineArg,
    key_store: Annotated[str, typer.Option(help="Key store to move the HE secret key into.")],
    option: Annotated[
        list[str] | None,
        typer.Option(help="Key store parameter KEY=VALUE (repeatable), e.g. token_label=frip."),
    ] = None,
    home: HomeOpt = None,
) -> None:
    """Initialise a key store for an engine (e.g. a PKCS#11 token) and move its HE key there.

    The PIN or passphrase is read from the environment or a prompt, never from options.
    """
    from frip_engine.engine import Engine

    section: dict[str, Any] = {"plugin": key_store}
    for item in option or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--option wants KEY=VALUE, got {item!r}")
        if key in {"pin", "passphrase"}:
            raise InputError("secrets are never taken from the command line; use the environment")
        section[key] = value
    with Engine.open(engine_name, home) as engine:
        engine.move_keys(section)
        out.print(f"{engine_name}: HE secret key now in {engine.parts.key_store.describe()}")


@keys_app.command("status")
def keys_status(engine_name: EngineArg, as_json: JsonOpt = False, home: HomeOpt = None) -> None:
    """Where the engine's keys are, which versions exist, and the KEK's protection."""
    from frip_engine.engine import Engine

    with Engine.open(engine_name, home) as engine:
        status = engine.key_status()
    _print_mapping(status, f"keys of {engine_name}", as_json)
    for warning in status["warnings"]:
        err.print(f"warning: {warning}", style="yellow", highlight=False, markup=False)
    if status["problems"]:  # a broken key store is an error, not a line in a table
        for problem in status["problems"]:
            err.print(f"broken: {problem}", style="red", highlight=False, markup=False)
        raise typer.Exit(KeyStoreError.exit_code)


@keys_app.command("rotate-kek")
def keys_rotate_kek(engine_name: EngineArg, home: HomeOpt = None) -> None:
    """Re-wrap the HE secret key under a fresh key-encryption key."""
    from frip_engine.engine import Engine

    with Engine.open(engine_name, home) as engine:
        label = engine.rotate_kek()
        audit_key_event(engine, "rotate_kek")
    out.print(f"{engine_name}: key-encryption key rotated ({label})")


@keys_app.command("rotate-he")
def keys_rotate_he(engine_name: EngineArg, home: HomeOpt = None) -> None:
    """New HE key pair; the gallery is re-encrypted block by block, then switched at once."""
    from frip_engine.engine import Engine

    with Engine.open(engine_name, home) as engine, progress_bar() as bar:
        task = bar.add_task("re-encrypting blocks", total=len(engine.store.blocks()))
        version = engine.rotate_he_keys(progress=lambda _b: bar.advance(task))
        audit_key_event(engine, "rotate_he", key_version=str(version))
    out.print(f"{engine_name}: now on HE key version {version}; old key deleted")


def main() -> None:
    """Entry point: load plugin commands, run, and turn FripErrors into exit codes."""
    plugins.plugin_manager().hook.register_commands(cli=app)
    try:
        app()
    except FripError as exc:
        err.print(styled(("error", "red"), f": {exc}"))
        sys.exit(exc.exit_code)
