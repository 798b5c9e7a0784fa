"""The ``frip`` command line. Errors map to messages and exit codes in ``main``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.table import Table
from typer.core import TyperGroup

from frip_engine import plugins
from frip_engine.ckks import PRESETS
from frip_engine.cli.audit import audit_key_event, audited_subjects
from frip_engine.cli.cluster import add_cluster_commands
from frip_engine.cli.migrate import add_migrate_command
from frip_engine.cli.output import (
    err,
    out,
    print_warnings,
    progress_bar,
    quit_on_broken_pipe,
    shown,
    stdout_closed,
    styled,
)
from frip_engine.cli.scaffold import add_scaffold_command
from frip_engine.cli.serve import add_serve_commands
from frip_engine.cli.subjects import add_subject_commands
from frip_engine.errors import (
    FripError,
    InputError,
    KeyStoreError,
    MissingFileError,
    SubjectError,
)
from frip_engine.kinds import KINDS
from frip_engine.probe import Probe, VendorTemplate, one_probe
from frip_engine.validate import refuse_special_file

if TYPE_CHECKING:
    from frip_engine.engine import Engine


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
keys_app = typer.Typer(
    help="HE key lifecycle: init, status, rotate-kek, rotate-he.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")

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
plugins_app = typer.Typer(invoke_without_command=True)
app.add_typer(plugins_app, name="plugins")
add_scaffold_command(plugins_app)  # frip plugins new KIND NAME


@plugins_app.callback()
def plugins_command(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List every plugin component by kind, with package, version and availability
    (frip plugins new KIND NAME: scaffold a plugin package)."""
    if ctx.invoked_subcommand is not None:
        return
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
        for kind in KINDS
        for c in reg.of_kind(kind.name)
    ]
    broken = [b.__dict__ for b in reg.broken]
    if as_json:
        _print_json({"components": rows, "broken": broken})
        return
    table = Table(title="frip-engine plugins", box=box.SIMPLE_HEAD)
    table.add_column("kind / name, package", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("summary", ratio=1, overflow="fold")
    for kind in KINDS:
        of_kind = [row for row in rows if row["kind"] == kind.name]
        if of_kind:
            table.add_row(styled((kind.name, "bold")))
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
    from frip_engine.api import requested_profile
    from frip_engine.engine import Engine
    from frip_engine.profile import Profile, check_name, executor_warnings

    check_name(name)
    he_table = {"plugin": he} if he else {}
    if preset:
        he_table["preset"] = preset
    sections = {
        "extractor": extractor or None,
        "he": he_table or None,
        "key_store": key_store or None,
    }
    data = requested_profile(name, profile, sections, threshold=threshold)
    source = f"{profile} (with the command line's options)" if profile else "command line"
    engine = Engine.create(Profile.from_dict(data, source), home)
    with engine:
        out.print(styled("created engine ", (name, "bold"), f" in {engine.directory}"))
        parts = engine.parts
        out.print(f"  {parts.he_backend.description}; key store: {parts.key_store.describe()}")
        stats = engine.stats()
        out.print(f"  threshold {stats['threshold']}: {stats['threshold_source']}", markup=False)
        print_warnings(executor_warnings(engine.profile))


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
TemplateOpt = Annotated[Path | None, typer.Option(help="Vendor template file (with --adapter).")]
AdapterOpt = Annotated[str | None, typer.Option(help="Adapter that decodes --template.")]


@app.command("enrol")
def enrol_command(
    engine_name: Annotated[str, typer.Argument(metavar="ENGINE")],
    subject_id: Annotated[
        str | None, typer.Argument(metavar="[SUBJECT]", help="Subject id (or --subject).")
    ] = None,
    subject: Annotated[
        str | None, typer.Option(help="Subject id (with --image/--embedding/--template).")
    ] = None,
    image: Annotated[
        list[Path] | None, typer.Option(help="Image of the subject (repeatable).")
    ] = None,
    embedding: Annotated[Path | None, typer.Option(help="Embedding file (.npy/.json).")] = None,
    template: Annotated[
        list[Path] | None,
        typer.Option(help="Vendor template file, decoded by --adapter (repeatable)."),
    ] = None,
    adapter: AdapterOpt = None,
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

    One subject: ``frip enrol ENGINE SUBJECT`` with images, an embedding file and/or
    vendor template files (``--template alice.acmt --adapter acme-v1``, decoded by that
    adapter plugin).
    One subject that fails is one error line (3 for a missing image, else 2); a folder or
    an index enrols every subject it can and exits 2 when any failed, each listed on
    stderr."""
    from frip_engine.datasets import csv_identities, folder_identities
    from frip_engine.embeddings import read_embedding_file
    from frip_engine.engine import Engine, EnrolItem

    if subject_id is not None:
        if subject is not None:
            raise InputError("give the subject id once: SUBJECT or --subject")
        subject = subject_id
    sources = sum(x is not None for x in (subject, folder, index))
    if sources != 1:
        raise InputError("give exactly one of SUBJECT (--subject), --folder or --index")
    if images_per_subject is not None and images_per_subject < 1:
        raise InputError(f"--images-per-subject {images_per_subject} must be at least 1")
    with Engine.open(engine_name, home) as engine:
        items: list[EnrolItem]
        if subject is not None:
            if not image and embedding is None and not template:
                raise InputError("a subject needs --image, --embedding and/or --template")
            for path in image or []:
                refuse_special_file(path, f"image {path}")
                if not path.is_file():
                    raise MissingFileError(f"image {path} does not exist")
            vectors = (
                [read_embedding_file(embedding, engine.parts.extractor.dimension)]
                if embedding
                else []
            )
            vectors += [t.decode() for t in _vendor_templates(template or [], adapter)]
            items = [EnrolItem(subject, images=list(image or []), embeddings=vectors)]
        else:
            if image or embedding is not None or template or adapter is not None:
                raise InputError(
                    "--image, --embedding, --template and --adapter go with one SUBJECT"
                )
            found = folder_identities(folder) if folder else csv_identities(index)  # type: ignore[arg-type]
            items = [EnrolItem(k, images=list(v[:images_per_subject])) for k, v in found.items()]
        if skip_existing:
            have = {s.subject_id for s in engine.gallery_store.subjects()}
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
    engine: Engine,
    image: Path | None,
    embedding: Path | None,
    template: Path | None,
    adapter: str | None,
) -> Probe:
    """The probe the command line names: IMAGE, --embedding FILE or --template FILE (with
    --adapter NAME). Raises ProbeError, InputError or MissingFileError (exit 3)."""
    from frip_engine.embeddings import read_embedding_file

    kind = one_probe(
        [image is not None, embedding is not None, template is not None],
        ("IMAGE", "--embedding FILE", "--template FILE"),
    )
    if kind == 0:
        return Probe.of_kind(kind, image)
    if kind == 1:
        assert embedding is not None
        dimension = engine.parts.extractor.dimension
        return Probe.of_kind(kind, read_embedding_file(embedding, dimension))
    assert template is not None
    return Probe.of_kind(kind, _vendor_templates([template], adapter)[0])


def _vendor_templates(files: list[Path], adapter: str | None) -> list[VendorTemplate]:
    """The vendor templates in ``files`` (``--template FILE``, repeatable where a command
    takes several), in the format of ``--adapter NAME``. Raises InputError (templates
    without an adapter) and MissingFileError (exit 3)."""
    if not files:
        return []
    if adapter is None:
        raise InputError("--template needs --adapter NAME (see frip plugins)")
    return [VendorTemplate.read(adapter, path) for path in files]


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
        if not (probe_clusters.isascii() and probe_clusters.isdigit() and len(probe_clusters) < 10):
            raise InputError(f"--probe-clusters takes a number or 'all', not {probe_clusters!r}")
        fan_out = int(probe_clusters)
    if probes is not None:
        from frip_engine.cli.batch import identify_probes

        single = (image, embedding, template)
        identify_probes(engine_name, probes, single, top_k, threshold, fan_out, as_json, home)
        return
    with Engine.open(engine_name, home) as engine:
        probe = _probe_args(engine, image, embedding, template, adapter)
        decision = engine.identify(probe, top_k=top_k, threshold=threshold, probe_clusters=fan_out)
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
        decision = engine.verify(subject, probe, threshold=threshold)
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
    print_warnings(status["warnings"])
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
        task = bar.add_task("re-encrypting blocks", total=len(engine.gallery_store.blocks()))
        version = engine.rotate_he_keys(progress=lambda _b: bar.advance(task))
        audit_key_event(engine, "rotate_he", key_version=str(version))
    out.print(f"{engine_name}: now on HE key version {version}; old key deleted")


add_subject_commands(app)  # frip subjects, frip embed
add_serve_commands(app)  # frip serve, frip vendors, frip audit
add_migrate_command(engine_app)  # frip engine migrate
add_cluster_commands(app)  # frip cluster status
# Plugin commands come last, mounted like any plugin's: frip eval, frip bench and frip demo
# are frip_eval's (entry point ``eval``); a plugin that fails to load is listed as broken by
# frip plugins and the rest of the CLI works without it.
plugins.when_loaded(lambda pm: pm.hook.register_commands(cli=app))


def main() -> None:
    """Entry point: run, and turn FripErrors into exit codes."""
    try:
        app()
    except FripError as exc:
        err.print(styled(("error", "red"), f": {exc}"))
        sys.exit(exc.exit_code)
