"""``frip eval ...``, ``frip bench ...`` and ``frip demo``: the measurement commands.

A plugin like any other (entry point ``eval`` of frip-engine): its ``register_commands``
hook mounts ``eval_app`` as ``frip eval``, ``bench_app`` as ``frip bench`` and
:func:`demo_command` as ``frip demo`` on the CLI. Every heavy import (models, scikit-learn,
matplotlib, the benchmarks) happens inside the commands.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.progress import Progress, TaskID
from rich.table import Table

from frip_engine import plugins
from frip_engine.cli.output import err, out, progress_bar
from frip_engine.errors import InputError, MissingFileError
from frip_engine.hookspecs import hookimpl

eval_app = typer.Typer(
    help="Measure extractors on a labelled image set: verification and identification.",
    no_args_is_help=True,
)
bench_app = typer.Typer(
    help="Benchmarks: print, and save JSON, Markdown and PNG.", no_args_is_help=True
)


@hookimpl
def register_commands(cli: typer.Typer) -> None:
    """Mount ``frip demo``, ``frip bench`` and ``frip eval`` on the ``frip`` CLI."""
    cli.command("demo")(demo_command)
    cli.add_typer(bench_app, name="bench")
    cli.add_typer(eval_app, name="eval")


FolderOpt = Annotated[
    Path | None, typer.Option(help="Folder of <identity>/<images> (default: lfw-dev).")
]
IndexOpt = Annotated[
    Path | None, typer.Option(help="CSV with path,identity columns (default: lfw-dev's).")
]
ExtractorOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--extractor", "-e", help="Extractor to measure (repeatable; default: all available)."
    ),
]
OutputOpt = Annotated[Path, typer.Option(help="Folder for the JSON and PNG outputs.")]
ThreadsOpt = Annotated[int, typer.Option(help="Threads per extractor (onnxruntime, OpenCV).")]
IdentitiesOpt = Annotated[
    int | None, typer.Option(help="Use only the first N identities (a quick run).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the JSON summary.")]


def _dataset(folder: Path | None, index: Path | None, identities: int | None) -> Any:
    from frip_eval.data import Dataset, find_lfw_dev

    if folder is None and index is None:
        index = find_lfw_dev(None) / "index.csv"
    if identities is not None and identities < 2:
        raise InputError("--identities must be at least 2")
    dataset = Dataset.load(folder, index).limit(identities)
    # named after its folder, also for an index given as a bare file name (root ".")
    return replace(dataset, root=dataset.root.resolve())


def _extractors(names: list[str] | None) -> list[str]:
    if names:
        for name in names:  # unknown or unavailable: a clear error before any work
            component = plugins.registry().get("extractor", name)
            if not component.available:
                component.create()
        return list(dict.fromkeys(names))
    found = [c.name for c in plugins.registry().of_kind("extractor") if c.available]
    if not found:
        raise InputError("no extractor plugin is available: see frip plugins")
    return found


class _Bar:
    """One progress bar per extractor, on stderr."""

    def __init__(self, progress: Progress, total: int) -> None:
        self.progress, self.total = progress, total
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, name: str, n: int) -> None:
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(f"{name}: extracting", total=self.total)
        self.progress.advance(self.tasks[name], n)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _cell(value: object) -> str:
    """A table cell: ``-`` for a value that does not apply (None)."""
    return "-" if value is None else str(value)


def _differ(count: int) -> str:
    """Encrypted vs plaintext decisions: ``all`` equal, else how many differ."""
    return "all" if count == 0 else f"{count} differ"


def _table(title: str, columns: tuple[str, ...]) -> Table:
    """A results table that fits 80 columns: first column kept whole, the others fold."""
    table = Table(title=title, box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    table.add_column(columns[0], no_wrap=True)
    for column in columns[1:]:
        table.add_column(column, justify="right", overflow="fold")
    return table


@eval_app.command("verify")
def verify_command(
    folder: FolderOpt = None,
    index: IndexOpt = None,
    pairs: Annotated[
        Path | None,
        typer.Option(
            help="Pairs to compare: CSV path_a,path_b[,same] or LFW pairs.txt "
            "(default: every pair of images)."
        ),
    ] = None,
    extractor: ExtractorOpt = None,
    output: OutputOpt = Path("results/eval"),
    threads: ThreadsOpt = 1,
    identities: IdentitiesOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """1:1 verification: EER, FNMR at FMR 1% and 0.1%, ROC and DET plot, images/s."""
    from frip_eval.evaluation import run_verify, write_outputs

    dataset = _dataset(folder, index, identities)
    names = _extractors(extractor)
    with progress_bar(as_json) as progress:
        summary = run_verify(dataset, names, pairs, threads, _Bar(progress, len(dataset.paths)))
    files = write_outputs(summary, output)
    if as_json:
        typer.echo(json.dumps(_without_curves(summary), indent=2))
        return
    table = _table(
        f"verification on {len(dataset.paths)} images ({summary['dataset']['pairs']})",
        (
            "extractor",
            "dim",
            "EER",
            "FNMR at FMR\n1%",
            "\n0.1%",
            "thr. at\nFMR 0.1%",
            "img/s",
            "no\nface",
        ),
    )
    for name, entry in summary["extractors"].items():
        v = entry["verification"]
        at = v["fnmr_at_fmr"]
        table.add_row(
            name,
            str(entry["dimension"]),
            _pct(v["eer"]),
            _pct(at["0.01"]["fnmr"]),
            _pct(at["0.001"]["fnmr"]),
            f"{at['0.001']['threshold']:.3f}",
            f"{entry['throughput']['images_per_second']:.1f}",
            str(entry["throughput"]["failures"]),
        )
    out.print(table)
    out.print("written: " + ", ".join(str(f) for f in files))


@eval_app.command("identify")
def identify_command(
    folder: FolderOpt = None,
    index: IndexOpt = None,
    extractor: ExtractorOpt = None,
    output: OutputOpt = Path("results/eval"),
    threads: ThreadsOpt = 1,
    identities: IdentitiesOpt = None,
    he_check: Annotated[
        bool,
        typer.Option(
            help="Also run every search through a TenSEAL engine and its plaintext "
            "twin and compare the decisions."
        ),
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """1:N identification: rank-1, CMC, FNIR at FPIR; CMC and FNIR/FPIR plot; images/s."""
    from frip_eval.evaluation import run_identify, write_outputs

    dataset = _dataset(folder, index, identities)
    names = _extractors(extractor)
    with progress_bar(as_json) as progress:
        summary = run_identify(
            dataset, names, threads, he_check, _Bar(progress, len(dataset.paths))
        )
    files = write_outputs(summary, output)
    if as_json:
        typer.echo(json.dumps(_without_curves(summary), indent=2))
        return
    out.print(identify_table(summary))
    out.print(
        "engine thr.: what a new engine with this extractor and no protection uses (its "
        "calibrated threshold where frip_engine/calibration.json has one)"
    )
    out.print("written: " + ", ".join(str(f) for f in files))


def identify_table(summary: dict[str, Any]) -> Table:
    """``frip eval identify``'s table: one row per extractor, readable at 80 columns."""
    first = next(iter(summary["extractors"].values()))["identification"]
    table = _table(
        f"identification: {first['gallery']} enrolled, {first['mated_searches']} mated "
        f"and {first['non_mated_searches']} non-mated searches",
        (
            "extractor",
            "rank-1",
            "FNIR at FPIR\n1%",
            "\n5%",
            "\n10%",
            "engine\nthr.",
            "FNIR,\nFPIR at\nthr.",
            "HE =\nplain",
            "img/s",
        ),
    )
    for name, entry in summary["extractors"].items():
        m = entry["identification"]
        at = m["fnir_at_fpir"]
        check = entry.get("encrypted_vs_plaintext")
        same = "-" if not check else _differ(check["decisions_compared"] - check["decisions_equal"])
        there = m["at_threshold"]
        table.add_row(
            name,
            f"{m['rank1']:.4f}",
            *(_pct(at[k]["fnir"]) if k in at else "-" for k in ("0.01", "0.05", "0.1")),
            f"{there['threshold']:.5g}",
            f"{_pct(there['fnir'])}\n{_pct(there['fpir'])}",
            same,
            f"{entry['throughput']['images_per_second']:.1f}",
        )
    return table


@bench_app.command("extract")
def bench_extract_command(
    folder: FolderOpt = None,
    index: IndexOpt = None,
    extractor: ExtractorOpt = None,
    threads: ThreadsOpt = 1,
    batch_size: Annotated[
        int | None, typer.Option(help="Faces embedded per model call (default: each's own).")
    ] = None,
    identities: IdentitiesOpt = None,
    output: OutputOpt = Path("results/bench"),
    as_json: JsonOpt = False,
) -> None:
    """Images per second per extractor, split into decode, detect, align and embed."""
    from frip_eval.evaluation import benchmark

    dataset = _dataset(folder, index, identities)
    names = _extractors(extractor)
    with progress_bar(as_json) as progress:
        summary = benchmark(dataset, names, threads, batch_size, _Bar(progress, len(dataset.paths)))
    output.mkdir(parents=True, exist_ok=True)
    path = output / "extractors.json"
    path.write_text(json.dumps(summary, indent=2))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    table = _table(
        f"extraction on {len(dataset.paths)} images, {threads} thread(s)",
        ("extractor", "img/s", "ms\ntotal", "decode", "detect", "align", "embed", "no\nface"),
    )
    for name, entry in summary["extractors"].items():
        ms = entry["ms_per_image"]
        table.add_row(
            name,
            f"{entry['images_per_second']:.1f}",
            f"{entry['ms_per_image_total']:.1f}",
            *(f"{ms[k]:.1f}" if k in ms else "-" for k in ("decode", "detect", "align", "embed")),
            str(entry["failures"]),
        )
    out.print(table)
    out.print(f"written: {path}")


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
    from frip_eval.demo import run_demo

    run_demo(data, output, preset, out)


@bench_app.command("cluster")
def bench_cluster_command(
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
    from frip_eval.bench_cluster import run

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


@bench_app.command("store")
def bench_store_command(
    registrants: Annotated[
        int, typer.Option(help="Gallery size each store is filled to.")
    ] = 100_000,
    probes: Annotated[int, typer.Option(help="Timed identifies per store.")] = 20,
    writers: Annotated[int, typer.Option(help="Concurrent writer processes (vs 1).")] = 4,
    writer_subjects: Annotated[
        int, typer.Option(help="Subjects enrolled by the writers together, per run.")
    ] = 4096,
    chunk: Annotated[int, typer.Option(help="Subjects per enrol_many call filling.")] = 4096,
    writer_chunk: Annotated[int, typer.Option(help="Subjects per writer's enrol_many call.")] = 256,
    dsn: Annotated[
        str | None, typer.Option(help="PostgreSQL connection string, no password (default: PG*).")
    ] = None,
    docs: Annotated[Path, typer.Option(help="Where the JSON, Markdown and PNG go.")] = Path("docs"),
) -> None:
    """sqlite vs postgres in one run: enrolment throughput and identify latency at
    --registrants, and 1 vs --writers concurrent writer processes."""
    from frip_eval.bench_store import run

    if registrants < probes + 1 or min(probes, writers, chunk, writer_chunk) < 1:
        raise InputError("--registrants must exceed --probes; the other numbers must be >= 1")
    run(registrants, probes, writers, writer_subjects, chunk, writer_chunk, dsn, docs, out)


@bench_app.command("scale")
def bench_scale_command(
    registrants: Annotated[int, typer.Option(help="Gallery size (128-d, fast).")] = 100_000,
    probes: Annotated[int, typer.Option(help="Timed identifies per executor.")] = 50,
    shards: Annotated[
        list[int] | None, typer.Option(help="Ray shard counts to measure (repeat).")
    ] = None,
    chunk: Annotated[int, typer.Option(help="Subjects per enrol_many call.")] = 4096,
    address: Annotated[
        str | None, typer.Option(help="A Ray cluster to use (default: start one here).")
    ] = None,
    cpus: Annotated[int, typer.Option(help="CPUs of the Ray head started here.")] = 2,
    enrol_workers: Annotated[
        int, typer.Option(help="Processes encrypting the enrolment (1: this one).")
    ] = 1,
    output: Annotated[
        Path, typer.Option(help="Where the JSON, Markdown and PNG go (docs: the project's).")
    ] = Path("results/bench"),
) -> None:
    """local vs processes vs ray (1/2/4 shards) on one gallery: identify p50/p99, Ray's
    overhead per identify, enrolment rate, a killed shard's restart time (needs the ray
    extra)."""
    from frip_eval.bench_scale import ScaleRun, run

    counts = shards or [1, 2, 4]
    if registrants < probes + 1 or min([probes, chunk, cpus, enrol_workers, *counts]) < 1:
        raise InputError("--registrants must exceed --probes; the other numbers must be >= 1")
    run(ScaleRun(registrants, probes, counts, chunk, address, cpus, enrol_workers, output), out)


@bench_app.command("he")
def bench_he_command(
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
    from frip_eval.bench_he import Options, run

    if max_n < 300 or workers < 1 or probes < 1:
        raise InputError("--max-n must be at least 300, --workers and --probes at least 1")
    words = tuple(w.strip() for w in only.split(",") if w.strip()) if only else ()
    options = Options(
        max_n, quick, workers, probes, data=data, results=results, docs=docs, only=words
    )
    run(options, out)


def _without_curves(summary: dict[str, Any]) -> dict[str, Any]:
    """The printed JSON: figures only (the file keeps the curves for re-plotting)."""
    slim: dict[str, Any] = json.loads(json.dumps(summary))
    for entry in slim["extractors"].values():
        entry.get("verification", {}).pop("roc", None)
        entry.get("identification", {}).pop("curve", None)
    return slim


@eval_app.command("protection")
def protection_command(
    index: IndexOpt = None,
    extractor: ExtractorOpt = None,
    block_size: Annotated[
        list[int] | None,
        typer.Option(
            "--block-size", "-b", help="PE-MIU block size (repeatable; default 16 32 64 128)."
        ),
    ] = None,
    max_impostors: Annotated[
        int, typer.Option(help="Impostor pairs sampled (fixed seed); 0: all.")
    ] = 100_000,
    output: OutputOpt = Path("results/eval"),
    threads: ThreadsOpt = 1,
    identities: IdentitiesOpt = None,
    he: Annotated[
        bool,
        typer.Option(
            "--he",
            help="Also time the encrypted pe-miu probe mode against the plain one (one "
            "TenSEAL fast block) and check its scores against the plaintext comparator.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """PE-MIU protection: EER/FNMR per block size, gender SVMs, complexity, D_sys, and
    with --he the cost under HE."""
    from frip_eval.data import find_lfw_dev
    from frip_eval.eval_protection import (
        DEFAULT_BLOCK_SIZES,
        markdown,
        read_genders,
        run_protection,
        write_protection_outputs,
    )

    if index is None:
        index = find_lfw_dev(None) / "index.csv"
    dataset = _dataset(None, index, identities)
    genders = read_genders(index, dataset)
    names = _extractors(extractor)
    sizes = block_size or list(DEFAULT_BLOCK_SIZES)
    with progress_bar(as_json) as progress:
        summary = run_protection(
            dataset,
            genders,
            names,
            sizes,
            max_impostors or None,
            threads,
            _Bar(progress, len(dataset.paths)),
            he=he,
        )
    files = write_protection_outputs(summary, output)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    out.print(markdown(summary))
    out.print("written: " + ", ".join(str(f) for f in files))


@eval_app.command("probes")
def probes_command(
    index: Annotated[
        Path | None,
        typer.Option(help="CSV with path,identity,gender columns (default: lfw-large's)."),
    ] = None,
    extractor: Annotated[str, typer.Option(help="Extractor whose embeddings are attacked.")] = (
        "arcface"
    ),
    output: OutputOpt = Path("docs"),
    threads: ThreadsOpt = 1,
    cost: Annotated[
        bool, typer.Option(help="Measure upload and latency at 1,000 and 100,000 registrants.")
    ] = True,
    cost_only: Annotated[
        bool,
        typer.Option(
            help="Only the cost (no data set, no attacks): the latency benchmark of the probe "
            "modes; writes probes-cost.{json,md,png}."
        ),
    ] = False,
    mode: Annotated[
        list[str] | None,
        typer.Option(help="Probe modes to time (repeatable; plain always): e.g. shared."),
    ] = None,
    repeats: Annotated[
        int, typer.Option(min=1, help="Rounds of the latency measurement (one probe each).")
    ] = 3,
    reuse_attacks: Annotated[
        Path | None,
        typer.Option(
            help="Take the attack, WIFS and reversibility figures from an earlier run's "
            "probes.json (figures only; they do not depend on the scorer) instead of "
            "embedding the data set again, and measure the cost afresh: for a busy machine."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Every probe mode (plain, pe-miu 16/32/64/128, encrypted, shared): who holds what,
    upload, latency, and the attacks a curious matcher can run on what it sees; the WIFS
    2023 gender table and the reversibility proxy. Writes probes.{json,md,png}: the whole
    page, with the command that made it."""
    from frip_eval.data import embed_with
    from frip_eval.eval_probes import (
        machine,
        markdown,
        modes,
        run_cost_only,
        run_probes,
        run_reusing,
        write_outputs,
    )
    from frip_eval.eval_protection import DEFAULT_BLOCK_SIZES, read_genders
    from frip_eval.threads import pin_threads

    pin_threads()
    known = modes(DEFAULT_BLOCK_SIZES)
    unknown = sorted(set(mode or []) - set(known))
    if unknown:
        raise InputError(f"unknown probe mode {', '.join(unknown)} (known: {', '.join(known)})")
    command = ["frip eval probes"]
    command += [f"--index {index}"] if index else []
    command += [f"--extractor {extractor}"] if extractor != "arcface" else []
    command += [f"--output {output}"]
    command += ["--no-cost"] if not cost else []
    command += ["--cost-only"] if cost_only else []
    command += [f"--mode {m}" for m in mode or []]
    command += [f"--repeats {repeats}"] if repeats != 3 else []
    started, run = time.monotonic(), machine()
    if cost_only:
        summary = run_cost_only(only=mode or None, repeats=repeats)
    elif reuse_attacks is not None:
        summary = run_reusing(reuse_attacks, only=mode or None, repeats=repeats)
        run["full_command"] = " ".join(command)
        command.append(f"--reuse-attacks {reuse_attacks}")
    else:
        if index is None:
            root = Path(__file__).resolve().parents[3]
            index = root / "shared" / "data" / "lfw-large" / "index.csv"
        dataset = _dataset(None, index, None)
        genders = read_genders(index, dataset)
        with progress_bar(as_json) as progress:
            bar = _Bar(progress, len(dataset.paths))
            embedded = embed_with(extractor, dataset, threads, bar)
        summary = run_probes(dataset, genders, embedded, with_cost=cost, repeats=repeats)
        run["embedded"] = len(dataset.paths)
    run.update(
        command=" ".join(command),
        load_after=machine()["load"],
        minutes=(time.monotonic() - started) / 60,
    )
    summary["run"] = run
    files = write_outputs(summary, output)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    out.print(markdown(summary))
    out.print("written: " + ", ".join(str(f) for f in files))


@eval_app.command("calibrate")
def calibrate_command(
    extractor: Annotated[
        str, typer.Option("--extractor", "-e", help="Extractor whose threshold to calibrate.")
    ] = "arcface",
    protection: Annotated[
        str, typer.Option(help="Template protection the engine uses: none or pe-miu.")
    ] = "none",
    block_size: Annotated[
        int | None, typer.Option(help="PE-MIU block size (default: the plugin's, 32).")
    ] = None,
    folder: FolderOpt = None,
    index: IndexOpt = None,
    fpir: Annotated[
        float,
        typer.Option(help="Target FPIR: the share of non-enrolled people allowed a candidate."),
    ] = 0.01,
    write_profile: Annotated[
        Path | None,
        typer.Option(
            help="Also set \\[engine] threshold in this existing profile TOML (it must use the "
            "same extractor, protection and block size; checked before any image is read)."
        ),
    ] = None,
    threads: ThreadsOpt = 1,
    identities: IdentitiesOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Calibrate a decision threshold on your own labelled images at a target FPIR.

    Open-set identification: identities with several images enrol one and search with the
    others (mated), identities with one image search unenrolled (non-mated); the threshold
    lets at most FPIR of the non-mated searches through, and FNIR is measured there.
    Embeddings are held in memory only, never written to disk."""
    from dataclasses import asdict

    from frip_eval.calibrate import resolve_protection, run_calibration, write_profile_threshold

    size = resolve_protection(extractor, protection, block_size)  # refuse before any image
    if write_profile is not None:
        _check_profile(write_profile, (extractor, protection, size))
    dataset = _dataset(folder, index, identities)
    command = "frip eval calibrate " + " ".join(
        f"--{k} {v}"
        for k, v in (
            ("extractor", extractor),
            ("protection", protection),
            ("block-size", block_size),
            ("fpir", fpir),
            ("folder", folder),
            ("index", index),
            ("identities", identities),
        )
        if v is not None
    )
    with progress_bar(as_json) as progress:
        record = run_calibration(
            dataset,
            extractor,
            protection,
            block_size,
            fpir,
            threads,
            command,
            _Bar(progress, len(dataset.paths)),
        )
    if write_profile is not None:
        write_profile_threshold(write_profile, record)
    if record.fpir_target * record.non_mated < 10:
        err.print(
            f"note: {record.non_mated} non-mated searches resolve FPIR {record.fpir_target:g} "
            f"poorly: the threshold rests on fewer than 10 of them; use at least "
            f"{math.ceil(10 / record.fpir_target)} people with one image each",
            markup=False,
        )
    if as_json:
        typer.echo(json.dumps(asdict(record), indent=2))
        return
    table = Table(title=f"threshold for {extractor} / {protection}", show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in asdict(record).items():
        table.add_row(key, _cell(value))
    out.print(table)
    out.print(record.describe(), markup=False)
    if write_profile is not None:
        out.print(
            f"written: [engine] threshold = {record.threshold} in {write_profile}", markup=False
        )
    else:
        out.print(f"use it: [engine] threshold = {record.threshold}", markup=False)


def _check_profile(path: Path, combination: tuple[str, str, int | None]) -> None:
    """Refuse ``--write-profile`` before the run: the file must be a valid profile of the
    calibrated (extractor, protection, block size or None). MissingFileError when it does
    not exist (calibrate updates a profile, it makes none: ``frip engine create`` makes
    engines), ProfileError when it is invalid, InputError for another combination."""
    from frip_engine.calibration import table_key
    from frip_engine.profile import load_profile

    if not path.is_file():
        raise MissingFileError(
            f"profile {path} does not exist: --write-profile updates an existing profile TOML"
        )
    profile = load_profile(path)
    made = plugins.create(
        "protection", profile.plugin("protection"), **profile.params("protection")
    )
    has = table_key(profile.plugin("extractor"), made.name, made.probe_block_size)
    if has != combination:
        raise InputError(
            f"{path} uses extractor/protection/block size {has}, not the {combination} being "
            "calibrated: calibrate with the profile's own combination"
        )
