"""A probe: the one face identify and verify compare with the gallery.

A probe is exactly one of an image (a file path, its bytes, or decoded pixels), an
embedding (a vector from the engine's extractor), or a vendor template (bytes in a vendor's
format and the name of the adapter that decodes them). The CLI, the service and the
engine all build a :class:`Probe`, so each rule about probes lives here: exactly one
kind is given (:func:`one_probe`, run once per request in the caller's spelling of each
kind), a vendor template file is read (:meth:`VendorTemplate.read`) and becomes an
embedding through its adapter (:meth:`VendorTemplate.decode`). The embedding itself,
given or decoded, is checked where every vector enters the engine:
:func:`frip_engine.embeddings.normalise` (a 1-d real floating-point vector of the
engine's dimension, finite, not all zeros).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from frip_engine.errors import InputError, MissingFileError, ProbeError

# An image: a file path, the file's bytes, or pixels already decoded by ``load_image``.
ImageSource = Path | str | bytes | np.ndarray
# The probe kinds, in the order every caller lists them, as the core spells them.
PROBE_KINDS: tuple[str, str, str] = ("an image", "an embedding", "a vendor template")
_FIELDS = ("image", "embedding", "template")  # the Probe's field of each kind
# The largest vendor template file read, in bytes (templates are a few KiB).
TEMPLATE_CAP = 1 << 20


def one_probe(given: Sequence[bool], names: Sequence[str] = PROBE_KINDS) -> int:
    """The index of the one probe kind given, in the order image, embedding, template.

    ``given``: whether each kind was given; ``names``: how the caller spells each kind
    (CLI options, JSON fields) for the message. Raises ProbeError unless exactly one was.
    """
    if sum(given) != 1:
        spelled = ", ".join(names[:-1]) + f" or {names[-1]}"
        raise ProbeError(f"give exactly one probe: {spelled}")
    return list(given).index(True)


@dataclass(frozen=True)
class VendorTemplate:
    """A template in a vendor's format: the bytes a vendor's device sent, and the name of
    the adapter plugin (``frip plugins``) that decodes them."""

    adapter: str
    data: bytes = field(repr=False)

    @classmethod
    def read(cls, adapter: str, path: Path) -> VendorTemplate:
        """The template in the file at ``path``, in the format of ``adapter``. Raises
        MissingFileError (no such file) or InputError (a folder or another non-regular
        file, a file over :data:`TEMPLATE_CAP` bytes, unreadable); the adapter itself is
        looked up when the template is decoded."""
        try:
            # non-blocking: opening a FIFO must not wait for a writer
            with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as file:
                if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                    raise InputError(f"template file {path} is not a regular file")
                data = file.read(TEMPLATE_CAP + 1)
        except FileNotFoundError:
            raise MissingFileError(f"template file {path} does not exist") from None
        except IsADirectoryError:
            raise InputError(f"{path} is a folder, not a template file") from None
        except OSError as exc:
            raise InputError(f"template file {path} cannot be read ({exc.strerror})") from None
        if len(data) > TEMPLATE_CAP:
            raise InputError(
                f"template file {path} is larger than the {TEMPLATE_CAP >> 20} MiB a template "
                "may be: give the vendor's template, not another file"
            )
        return cls(adapter, data)

    def decode(self) -> np.ndarray:
        """The embedding the adapter decodes, float (d,), not yet normalised.

        Raises PluginError for an unknown adapter and the adapter's own InputError
        (typically EmbeddingError) for a damaged or foreign template."""
        from frip_engine import plugins

        return np.asarray(plugins.create("adapter", self.adapter).decode(self.data))


@dataclass(frozen=True, eq=False)  # arrays have no single truth value: compared by identity
class Probe:
    """Exactly one of ``image``, ``embedding`` or ``template`` (ProbeError otherwise).

    ``embedding`` is any 1-d array or list of real numbers; the engine checks and
    normalises it against its extractor's dimension."""

    image: ImageSource | None = None
    embedding: object | None = field(default=None, repr=False)
    template: VendorTemplate | None = None

    def __post_init__(self) -> None:
        one_probe([self.image is not None, self.embedding is not None, self.template is not None])
        if isinstance(self.image, bytearray | memoryview):  # bytes-like: its bytes
            object.__setattr__(self, "image", bytes(self.image))
        if self.image is not None and not isinstance(self.image, Path | str | bytes | np.ndarray):
            raise ProbeError(
                "an image is a path, str, bytes or decoded pixels (numpy array), "
                f"not {type(self.image).__name__}"
            )
        if self.template is not None and not isinstance(self.template, VendorTemplate):
            raise ProbeError(
                "a template is a VendorTemplate (its adapter's name and the bytes), "
                f"not {type(self.template).__name__}"
            )

    @classmethod
    def of_kind(cls, kind: int, value: object) -> Probe:
        """The probe of kind ``kind`` holding ``value``, for a caller that chose the kind
        with :func:`one_probe` in its own spelling (before decoding the one value it was
        given): 0 an image (ImageSource), 1 an embedding, 2 a :class:`VendorTemplate`.
        Raises ProbeError for a kind outside 0-2 or a None value."""
        if kind not in range(len(_FIELDS)) or value is None:
            raise ProbeError(f"no probe of kind {kind!r} holding {type(value).__name__}")
        return cls(**{_FIELDS[kind]: value})  # type: ignore[arg-type]

    @classmethod
    def of(
        cls,
        probe: Probe | ImageSource | None = None,
        image: ImageSource | None = None,
        embedding: object | None = None,
    ) -> Probe:
        """The probe that ``Engine.identify`` and ``Engine.verify`` were given: a Probe, or
        an image as the first argument (a path, str, bytes or pixels), or ``image=`` or
        ``embedding=``. Raises ProbeError unless that is exactly one probe."""
        if isinstance(probe, Probe):
            if image is not None or embedding is not None:
                raise ProbeError("give exactly one probe: a Probe, or an image or an embedding")
            return probe
        if probe is not None and image is not None:
            raise ProbeError("give the probe image once: as the first argument or as image=")
        return cls(image=image if probe is None else probe, embedding=embedding)

    def vector(self) -> object:
        """The embedding this probe carries, a vendor template decoded by its adapter; None
        for an image (the engine's extractor makes its embedding)."""
        if self.template is not None:
            return self.template.decode()
        return self.embedding
