"""``frip identify ENGINE --probes DIR_OR_CSV``: many probes in one process, batched.

The probes are read from a folder (every image and embedding file in it, by name; not
its subfolders) or a
CSV file (a header row with an ``image`` or ``embedding`` column, or lfw's ``path``,
each a file path relative to the CSV's folder) and identified ``BATCH`` at a time with
:meth:`frip_engine.engine.Engine.identify_many`: one pass over the gallery and one key
unwrap per batch. Each probe gets its own line: its decision, or its own error; a bad
probe never stops the others. The exit code is 0 when every probe was answered, else
the exit code of the first probe that failed.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import typer

from frip_engine.cli.output import err, out, shown, styled
from frip_engine.decision import Decision
from frip_engine.errors import FripError, InputError, MissingFileError
from frip_engine.validate import check_threshold, check_top_k

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
EMBEDDING_SUFFIXES = frozenset({".npy", ".json"})
BATCH = 16  # probes scored together: one pass over each block, one key unwrap
CSV_COLUMNS = ("image", "embedding", "path")  # "path": lfw's index.csv, an image

# One probe as listed: (label, "image" or "embedding", file), or (label, error).
Listed = tuple[str, str, Path] | tuple[str, FripError]


def list_probes(source: Path) -> Iterator[Listed]:
    """The probes of a folder (its image and embedding files, sorted by name) or a CSV
    file, in order. Raises MissingFileError or InputError when ``source`` itself cannot
    be read; a bad row is listed as that probe's error."""
    if source.is_dir():
        entries = sorted(source.iterdir())
        wanted = IMAGE_SUFFIXES | EMBEDDING_SUFFIXES
        probes = [p for p in entries if p.suffix.lower() in wanted and p.is_file()]
        if not probes:
            raise InputError(
                f"--probes {source}: no probe files in this folder (images "
                f"{', '.join(sorted(IMAGE_SUFFIXES))}, or embeddings .npy/.json); "
                "subfolders are not read"
            )
        skipped = [p.name for p in entries if p not in probes]
        if skipped:
            err.print(
                styled(
                    f"frip: --probes {source}: skipped {len(skipped)} entries that are not "
                    f"probe files (e.g. {skipped[0]}); subfolders are not read"
                )
            )
        for path in probes:
            kind = "embedding" if path.suffix.lower() in EMBEDDING_SUFFIXES else "image"
            yield str(path), kind, path
        return
    if not source.is_file():
        raise MissingFileError(f"--probes {source}: no such folder or file")
    if source.suffix.lower() != ".csv":
        raise InputError(f"--probes {source}: give a folder or a .csv file")
    try:
        with source.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = [{(k or "").strip(): v for k, v in row.items()} for row in reader]
            header = [c.strip() for c in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"--probes {source}: cannot read it as CSV ({exc})") from None
    if not rows:
        raise InputError(f"--probes {source}: the CSV has no rows after its header")
    columns = [c for c in CSV_COLUMNS if c in header]
    if not columns:
        raise InputError(
            f"--probes {source}: the header needs an 'image' or 'embedding' column, has {header}"
        )
    for line, row in enumerate(rows, start=2):
        label = f"{source}:{line}"
        given = [(c, (row.get(c) or "").strip()) for c in columns if (row.get(c) or "").strip()]
        if len(given) != 1:
            yield label, InputError(f"{label}: give exactly one of {', '.join(columns)}")
            continue
        column, value = given[0]
        kind = "embedding" if column == "embedding" else "image"
        yield label, kind, source.parent / value


def _batches(listed: Iterator[Listed], size: int) -> Iterator[list[Listed]]:
    batch: list[Listed] = []
    for item in listed:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _answer(engine: Any, batch: Sequence[Listed], **options: Any) -> list[Decision | FripError]:
    """Each listed probe's decision or error, the readable ones identified together."""
    from frip_engine.embeddings import read_embedding_file

    answers: list[Decision | FripError | None] = [None] * len(batch)
    probes: list[dict[str, Any]] = []
    where: list[int] = []
    for index, item in enumerate(batch):
        if len(item) == 2:
            answers[index] = item[1]
            continue
        _, kind, path = item
        try:
            probe: Any = (
                read_embedding_file(path, engine.parts.extractor.dimension)
                if kind == "embedding"
                else path
            )
        except FripError as exc:
            answers[index] = exc
            continue
        probes.append({kind: probe})
        where.append(index)
    if probes:
        for index, answer in zip(where, engine.identify_many(probes, **options), strict=True):
            answers[index] = answer
    return [a for a in answers if a is not None]


def _line(label: str, answer: Decision | FripError, as_json: bool) -> None:
    if as_json:
        if isinstance(answer, Decision):
            record: dict[str, Any] = {"probe": label, "decision": answer.to_dict()}
        else:
            record = {
                "probe": label,
                "error": {
                    "type": type(answer).__name__,
                    "message": str(answer),
                    "exit_code": answer.exit_code,
                },
            }
        typer.echo(json.dumps(record, default=str))
    elif isinstance(answer, FripError):
        err.print(styled(shown(label), ("  error", "red"), f": {answer}"))
    elif answer.matched:
        out.print(styled(shown(label), ("  match", "green"), f" {answer.subject_id} "
                         f"(score {answer.score:.4f})"))  # fmt: skip
    else:
        best = "empty engine" if answer.score is None else f"best score {answer.score:.4f}"
        out.print(styled(shown(label), ("  no match", "red"), f" ({best})"))


def identify_probes(
    engine_name: str,
    source: Path,
    single: Sequence[object],
    top_k: int,
    threshold: float | None,
    probe_clusters: int | str | None,
    as_json: bool,
    home: Path | None,
) -> None:
    """Identify every probe of ``source`` (a folder or CSV) in batches, one line each;
    ``single`` holds the command's one-probe arguments, which must all be None."""
    from frip_engine.engine import Engine

    if any(value is not None for value in single):
        raise InputError("give --probes or one probe (IMAGE, --embedding, --template), not both")
    check_top_k(top_k)  # the options first, as the one-probe path checks them
    if threshold is not None:
        check_threshold(threshold)
    if isinstance(probe_clusters, int) and probe_clusters < 1:
        raise InputError(f"--probe-clusters takes a number >= 1 or 'all', not {probe_clusters}")
    listed = list_probes(source)
    failed: FripError | None = None
    with Engine.open(engine_name, home) as engine:
        for batch in _batches(listed, BATCH):
            options = {"top_k": top_k, "threshold": threshold, "probe_clusters": probe_clusters}
            for item, answer in zip(batch, _answer(engine, batch, **options), strict=True):
                _line(item[0], answer, as_json)
                if failed is None and isinstance(answer, FripError):
                    failed = answer
    if failed is not None:
        raise typer.Exit(failed.exit_code)
