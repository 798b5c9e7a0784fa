"""``frip subjects`` and ``frip embed``.

Mounted by ``frip_engine.cli`` with ``add_subject_commands``; numpy, the engine and the
plugins are imported inside the commands.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from frip_engine.cli.output import err, out, shown, styled
from frip_engine.errors import InputError, MissingFileError
from frip_engine.validate import refuse_special_file

if TYPE_CHECKING:
    import numpy as np

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", envvar="FRIP_HOME", help="Where engines live (default: $FRIP_HOME)."),
]
CLEAR_TEMPLATE_WARNING = (
    "warning: {path} is a biometric template in the clear: whoever holds it can match this "
    "face in other galleries. Keep it private, share it only over an encrypted channel, "
    "and delete it when done"
)


def add_subject_commands(app: typer.Typer) -> None:
    """Mount ``frip subjects`` and ``frip embed`` on the top command group."""
    app.command("subjects")(subjects_command)
    app.command("embed")(embed_command)


def subjects_command(
    engine_name: Annotated[str, typer.Argument(metavar="ENGINE")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    home: HomeOpt = None,
) -> None:
    """List the subjects enrolled in an engine: id, when, and from how many images."""
    from frip_engine.engine import Engine

    with Engine.open(engine_name, home) as engine:
        records = engine.subject_records()
    if as_json:
        rows = [
            {"subject_id": r.subject_id, "enrolled_at": r.enrolled_at, "images": r.images}
            for r in records
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    for record in records:
        line = f"{shown(record.subject_id)}  {record.enrolled_at}  {record.images} image(s)"
        out.print(line, soft_wrap=True)
    out.print(f"{len(records)} subject(s) enrolled in {engine_name}")


def embed_command(
    image: Annotated[Path, typer.Argument(help="Image of one face.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The .npy file to write (mode 0600).")
    ],
    engine_name: Annotated[
        str | None,
        typer.Option(
            "--engine", help="Use this engine's extractor, with its profile's parameters."
        ),
    ] = None,
    extractor: Annotated[
        str | None, typer.Option(help="Use this extractor plugin, with its default parameters.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace OUTPUT if it exists.")] = False,
    home: HomeOpt = None,
) -> None:
    """Export the embedding of the face in IMAGE to a .npy file (unit length, float64).

    The file is a biometric template in the clear, written only to OUTPUT, readable by
    you alone; nothing else is stored."""
    from frip_engine import plugins
    from frip_engine.embeddings import normalise
    from frip_engine.engine import Engine
    from frip_engine.images import load_image

    if (engine_name is None) == (extractor is None):
        raise InputError("give exactly one of --engine ENGINE or --extractor NAME")
    if output.suffix != ".npy":
        raise InputError(f"--output {output} must name a .npy file")
    refuse_special_file(image, f"image {image}")
    if not image.is_file():
        raise MissingFileError(f"image {image} does not exist")
    if engine_name is not None:
        with Engine.open(engine_name, home) as engine:
            vector, notes = engine.embed_image(image)
            used = engine.parts.extractor.name
    else:
        assert extractor is not None
        component = plugins.create("extractor", extractor)
        extraction = component.extract(load_image(image))
        vector, notes = normalise(extraction.embedding, component.dimension), extraction.notes
        used = component.name
    write_clear_template(output, vector, force)
    done = f"wrote {output}: {vector.size}-d embedding of {image} (extractor {used})"
    out.print(done, soft_wrap=True)
    for note in notes:
        out.print(styled("  ", ("note", "yellow"), f": {note}"))
    err.print(CLEAR_TEMPLATE_WARNING.format(path=output), style="yellow")


def write_clear_template(path: Path, vector: np.ndarray, replace: bool) -> None:
    """Write ``vector`` as a .npy file at ``path`` with mode 0600 (whatever the umask),
    refusing an existing file unless ``replace``, and never following a symbolic link.
    Raises InputError (exists, a folder, a link, not writable), MissingFileError (no such
    folder); a failed write leaves no file."""
    import numpy as np

    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if replace else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise InputError(f"{path} exists; --force replaces it") from None
    except FileNotFoundError:
        raise MissingFileError(f"folder {path.parent} does not exist") from None
    except OSError as exc:  # a folder, a symbolic link, no permission
        raise InputError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)  # a replaced file keeps no wider mode
            np.save(handle, vector)
    except OSError as exc:  # a full disk
        path.unlink(missing_ok=True)
        raise InputError(f"cannot write {path}: {exc.strerror}") from None
