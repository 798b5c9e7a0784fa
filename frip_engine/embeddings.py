"""Checking, normalising and reading embeddings: the one place a vector enters the engine.

An embedding is a 1-d vector of real floating-point numbers (float16, float32, float64 or
long double arrays; for JSON, where numbers have one type, a list of ints and floats).
Booleans, integers, complex numbers, text and Python objects are refused, never cast:
an integer or boolean array is a mask or an index far more often than an embedding.
float16 is accepted: widening it is exact, so the engine adds no loss to what the
producer stored. Normalising divides by the largest magnitude before the norm, so any
finite vector that is not all zeros has a direction, from 1e-300 to 1e300.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Sequence
from pathlib import Path
from tokenize import TokenError
from typing import Any, BinaryIO

import numpy as np

from frip_engine.errors import EmbeddingError, MissingFileError, NotOnePersonError
from frip_engine.validate import refuse_special_file

NPY_MAGIC = b"\x93NUMPY"
MAX_LENGTH = 65_536  # values in one embedding (face embeddings have 128 to 1,024)
MAX_JSON_BYTES = 16 * 2**20  # a 65,536-value list in JSON text is under 2 MB
_KIND_NAMES = {
    "b": "boolean",
    "i": "integer",
    "u": "integer",
    "c": "complex",
    "U": "text",
    "S": "text",
    "O": "Python objects",
    "V": "structured or raw-byte",
    "M": "date-time",
    "m": "time-delta",
}


def _element_problem(value: object) -> str | None:
    """What is wrong with one element of a list embedding, or None for a real number."""
    if isinstance(value, bool | np.bool_):
        return "boolean"
    if isinstance(value, numbers.Real):
        return None
    if isinstance(value, str | bytes):
        return "text"
    if isinstance(value, numbers.Complex):
        return "complex"
    if isinstance(value, list | tuple | np.ndarray):
        return "nested lists (it must be one vector)"
    return "None" if value is None else f"{type(value).__name__}"


def _real_array(vector: object, what: str) -> np.ndarray:
    """The vector as a real floating-point array, refusing every other element type."""
    if isinstance(vector, list | tuple):
        for value in vector:
            problem = _element_problem(value)
            if problem is not None:
                raise EmbeddingError(
                    f"{what} holds {problem} values; an embedding is a list of real numbers"
                )
        try:
            return np.array(vector, dtype=np.float64)
        except OverflowError:
            raise EmbeddingError(f"{what} holds a number too large for a float") from None
    array = np.asarray(vector)
    if array.dtype.kind != "f":
        kind = _KIND_NAMES.get(array.dtype.kind, array.dtype.kind)
        raise EmbeddingError(
            f"{what} holds {kind} values (dtype {array.dtype}); an embedding is a vector of "
            "real floating-point numbers (float16, float32, float64 or longdouble)"
        )
    return array


def normalise(vector: object, dimension: int, what: str = "embedding") -> np.ndarray:
    """An L2-normalised float64 copy of a ``(dimension,)`` real floating-point vector.

    The vector is divided by its largest magnitude first, so the norm neither overflows
    (1e155 * v) nor underflows (a norm of 1e-13 or 1e-300). Raises EmbeddingError naming
    the problem: a non-float element type, wrong shape or dimension, NaN or infinity,
    or all zeros.
    """
    array = _real_array(vector, what)
    if array.ndim != 1:
        raise EmbeddingError(f"{what} must be one vector, got shape {array.shape}")
    if array.shape[0] != dimension:
        raise EmbeddingError(
            f"{what} has dimension {array.shape[0]}, this engine expects {dimension}"
        )
    if not np.all(np.isfinite(array)):
        raise EmbeddingError(f"{what} contains NaN or infinite values")
    largest = np.max(np.abs(array))
    if largest == 0:
        raise EmbeddingError(f"{what} is all zeros: it has no direction to normalise")
    # Widening to float64 is exact; a long double is scaled in its own precision first.
    scaled = (array.astype(np.result_type(array.dtype, np.float64)) / largest).astype(np.float64)
    return np.asarray(scaled / np.linalg.norm(scaled))


def mean_template(
    embeddings: Sequence[np.ndarray],
    labels: Sequence[str] | None = None,
    same_person_floor: float = -1.0,
) -> np.ndarray:
    """One template from several images of a subject: the normalised mean direction.

    ``embeddings``: unit vectors, float64 (d,), all from one extractor. ``labels`` name them
    in messages (default "embedding 1", ...). ``same_person_floor``: the lowest cosine two
    images of one person give; each extractor calibrates its own as the 0.1% quantile of
    the genuine-pair cosine on lfw-large (benchmarks/face_policy.py, docs/face-policy.md),
    so a same-person pair falls below it about once in a thousand pairs while most pairs
    of two different people do. -1 accepts any set.

    Returns the unit template, float64 (d,). Raises NotOnePersonError naming the pairs (worst
    first) whose cosine is below the floor: a mean of two people matches neither of them,
    or both. Raises EmbeddingError when the embeddings cancel out.
    """
    matrix = np.stack([np.asarray(e, dtype=np.float64) for e in embeddings])
    # the mean of one vector is itself (bit for bit), and it has no pairs to check
    mean = matrix[0] if len(matrix) == 1 else np.mean(matrix, axis=0)
    norm = float(np.linalg.norm(mean))
    if not np.isfinite(norm) or norm < 1e-6:
        raise EmbeddingError("the subject's embeddings cancel out: they cannot be one person")
    if same_person_floor > -1.0 and len(matrix) > 1:  # -1: no check (-1 may round below)
        names = list(labels or [f"embedding {i}" for i in range(1, len(matrix) + 1)])
        cosines = matrix @ matrix.T
        first, second = np.triu_indices(len(matrix), k=1)
        apart = sorted(
            (float(cosines[i, j]), names[i], names[j])
            for i, j in zip(first, second, strict=True)
            if cosines[i, j] < same_person_floor
        )
        if apart:
            pairs = "; ".join(f"{a} and {b} have cosine {c:.2f}" for c, a, b in apart[:5])
            more = f" (and {len(apart) - 5} more pairs)" if len(apart) > 5 else ""
            raise NotOnePersonError(
                f"these images are not one person: {pairs}{more}, below the extractor's "
                f"same_person_floor {same_person_floor:.2f} (one person's photos fall below "
                "it about once in a thousand pairs). Enrol them as different subjects or "
                "drop the wrong image; same_person_floor in [extractor] changes the bound"
            )
    return np.asarray(mean / norm)


def _not_npy(head: bytes) -> str:
    """What a file that lacks the .npy header looks like, for the error message."""
    if head.startswith(b"PK"):
        return "it is a zip archive (an .npz? load it and save one array with numpy.save)"
    if head[:1] == b"\x80":
        return "it is a Python pickle, which is never loaded"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "it holds binary data of another format"
    return "it holds text (a JSON list belongs in a .json file)"


def _npy_header(handle: BinaryIO, path: Path) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """The shape and dtype a .npy header declares; the handle is left at the data."""
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f"format version {version[0]}.{version[1]} is not read here")
        if any(length < 0 for length in shape):
            raise ValueError(f"negative shape {shape}")
    except (ValueError, TypeError, SyntaxError, RecursionError, TokenError, EOFError) as exc:
        problem = str(exc) if len(str(exc)) <= 200 else f"{str(exc)[:200]}..."
        raise EmbeddingError(
            f"{path}: damaged .npy header ({problem}); save the vector with numpy.save"
        ) from None
    return tuple(shape), dtype


def _read_npy(path: Path) -> np.ndarray:
    """The array of a .npy file, its header checked before anything is allocated: one
    vector of at most MAX_LENGTH values, no Python objects, and a file exactly as long as
    header plus data (neither truncated nor followed by other bytes)."""
    with path.open("rb") as handle:
        head = handle.read(len(NPY_MAGIC))
        if head != NPY_MAGIC:
            raise EmbeddingError(
                f"{path}: not a NumPy .npy file: {_not_npy(head + handle.read(58))}; "
                "save the vector with numpy.save"
            )
        handle.seek(0)
        shape, dtype = _npy_header(handle, path)
        if dtype.hasobject:
            raise EmbeddingError(
                f"{path}: holds pickled Python objects, which are never loaded; "
                "save a float array with numpy.save"
            )
        if len(shape) != 1:
            raise EmbeddingError(f"{path}: an embedding must be one vector, got shape {shape}")
        if shape[0] > MAX_LENGTH:
            raise EmbeddingError(
                f"{path}: the header declares {shape[0]} values; an embedding has at most "
                f"{MAX_LENGTH:,}"
            )
        data_size = shape[0] * dtype.itemsize
        extra = path.stat().st_size - handle.tell() - data_size
        if extra < 0:
            raise EmbeddingError(
                f"{path}: damaged or truncated .npy file: the data is {-extra} bytes short "
                f"of the {shape[0]} {dtype} values its header declares"
            )
        if extra > 0:
            raise EmbeddingError(
                f"{path}: {extra} bytes after the array its header declares; save one "
                "vector per file with numpy.save"
            )
        return np.frombuffer(handle.read(data_size), dtype=dtype)


def _read_json(path: Path) -> list[object]:
    """The list in a JSON file of at most MAX_JSON_BYTES, refusing numbers with too many
    digits and nesting deeper than the parser can follow."""
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise EmbeddingError(
            f"{path}: {size / 2**20:.1f} MB; a JSON embedding file has at most "
            f"{MAX_JSON_BYTES // 2**20} MB"
        )
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise EmbeddingError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise EmbeddingError(f"{path}: not valid JSON ({exc})") from None
    except ValueError as exc:  # int() refuses more digits than sys.get_int_max_str_digits()
        raise EmbeddingError(f"{path}: holds a number with too many digits ({exc})") from None
    except RecursionError:
        raise EmbeddingError(
            f"{path}: lists nested too deeply; a JSON embedding is one list of numbers"
        ) from None
    if not isinstance(data, list):
        raise EmbeddingError(
            f"{path}: a JSON embedding is a list of numbers, this file holds a "
            f"{type(data).__name__}"
        )
    return data


def read_embedding_file(path: Path, dimension: int) -> np.ndarray:
    """Read and normalise one embedding from .npy (a 1-d float array, never pickled) or
    .json (a list of numbers). Raises MissingFileError (not found) or EmbeddingError
    naming what is wrong with the file or the vector."""
    refuse_special_file(path, f"embedding file {path}")
    if not path.is_file():
        raise MissingFileError(f"embedding file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".json"):
        raise EmbeddingError(f"{path}: embedding files must be .npy or .json")
    try:
        if path.stat().st_size == 0:
            raise EmbeddingError(f"{path}: the file is empty (0 bytes)")
        data: object = _read_npy(path) if suffix == ".npy" else _read_json(path)
    except OSError as exc:
        raise EmbeddingError(f"{path}: cannot be read ({exc.strerror})") from None
    return normalise(data, dimension, what=f"embedding in {path.name}")
