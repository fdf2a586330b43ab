"""Readers of published image datasets for :mod:`collapse.data.importers`, and the ``Source`` they return.

    cifar10:PATH        the CIFAR-10 python version: ``cifar-10-python.tar.gz``, or its extracted
                        ``cifar-10-batches-py`` folder (or a folder holding it); train = data_batch_1..5,
                        holdout from test_batch. Its pickles are read with an unpickler that rebuilds
                        numpy arrays and nothing else, so a hostile file cannot run code.
    parquet:PATH        Hugging Face datasets' Parquet export (a file, a directory of .parquet files or a
                        glob, sorted): an ``image``/``img`` column of the Image feature (struct<bytes, path>)
                        and an optional integer ``label``/``labels`` column; images decoded when loaded.
"""
from __future__ import annotations

import glob
import io
import json
import os
import pickle
import posixpath
import tarfile
import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from collapse.errors import DataError


@dataclass
class Source:
    """A random-access real image source: ``load(i) -> uint8 image`` for i < count, labels when known."""
    name: str
    count: int
    load: Callable[[int], np.ndarray]
    labels: Sequence | None
    origin: Callable[[int], str]
    locate: Callable[[int], tuple] | None = None  # wds: where sample i lives, for a task that reads it alone
    class_names: Sequence[str] | None = None      # label -> class name, when the source names its classes


def image_array(im: Image.Image) -> np.ndarray:
    """A decoded image as uint8 (H, W) grey or (H, W, 3) RGB (any other mode is converted to RGB)."""
    return np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im).copy()


# --- CIFAR-10 (python version) -------------------------------------------------------------------

CIFAR10_TRAIN = tuple(f"data_batch_{k}" for k in range(1, 6))
CIFAR10_TEST = "test_batch"
CIFAR10_EXPECTED = "the CIFAR-10 python version (cifar-10-python.tar.gz, or its cifar-10-batches-py folder " \
                   "with data_batch_1..5, test_batch)"
_RECONSTRUCT = np.empty(0).__reduce__()[0]   # numpy's own _reconstruct, whatever module it lives in


def _latin1(text, encoding):
    """``_codecs.encode(text, 'latin1')``: how Python 3 writes bytes in a protocol 2 pickle; nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"it calls _codecs.encode with {type(text).__name__}, {encoding!r}; "
                                     "only str, 'latin1' (bytes) is allowed")
    return text.encode("latin1")


_NUMPY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
                  ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
                  ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _latin1}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays (Python 2's and 3's); any other global (os.system,
    builtins.eval...) is refused before it is called."""

    def find_class(self, module, name):
        try:
            return _NUMPY_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, and only numpy arrays are allowed") from None


def load_array_pickle(data: bytes, where: str):
    """A pickle (Python 2's included: ``encoding="bytes"``) of plain data and numpy arrays, else a DataError."""
    try:
        return _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise DataError(f"{where}: refused pickle: {e}") from None
    except Exception as e:  # truncated, not a pickle, bad numpy state
        raise DataError(f"{where}: not a readable pickle ({type(e).__name__}: {e})") from None


def _str_keys(obj, where: str) -> dict:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a CIFAR-10 batch (a dict with b'data' and b'labels'), "
                        f"got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def cifar10_batch(data: bytes, where: str) -> tuple[np.ndarray, list[int]]:
    """``(images uint8 (n, 32, 32, 3), labels)`` of one CIFAR-10 batch pickle: b'data' (n, 3072) rows of
    1024 red, 1024 green and 1024 blue bytes (each row-major 32x32) and b'labels' (n ints 0..9)."""
    batch = _str_keys(load_array_pickle(data, where), where)
    missing = [k for k in ("data", "labels") if k not in batch]
    if missing:
        raise DataError(f"{where}: a CIFAR-10 batch needs b'data' and b'labels', it has "
                        f"{sorted(map(str, batch))} (missing {', '.join(missing)})")
    rows, labels = batch["data"], batch["labels"]
    if not isinstance(rows, np.ndarray) or rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != 3072:
        raise DataError(f"{where}: b'data' must be a uint8 array (n, 3072) (32x32 RGB planes), got "
                        f"{getattr(rows, 'dtype', type(rows).__name__)} {getattr(rows, 'shape', '')}")
    if isinstance(labels, np.ndarray):
        labels = labels.tolist()
    if not isinstance(labels, list) or not all(type(v) is int and 0 <= v <= 9 for v in labels):
        raise DataError(f"{where}: b'labels' must be a list of integers 0..9")
    if len(labels) != len(rows):
        raise DataError(f"{where}: {len(rows)} images in b'data' but {len(labels)} labels")
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _cifar10_files(path: str) -> dict[str, bytes]:
    """The raw batch files (and batches.meta when there) of an archive or an extracted folder."""
    wanted = CIFAR10_TRAIN + (CIFAR10_TEST, "batches.meta")
    found: dict[str, bytes] = {}
    if os.path.isdir(path):
        root = os.path.join(path, "cifar-10-batches-py")
        root = root if os.path.isdir(root) else path
        for name in wanted:
            if os.path.isfile(os.path.join(root, name)):
                with open(os.path.join(root, name), "rb") as f:
                    found[name] = f.read()
    elif os.path.isfile(path):
        try:
            with tarfile.open(path, "r:*") as tar:
                for info in tar:
                    name = posixpath.basename(info.name)
                    if info.isfile() and name in wanted and name not in found:
                        found[name] = tar.extractfile(info).read()
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise DataError(f"cifar10 {path!r}: not a readable archive ({type(e).__name__}: {e}); "
                            f"expected {CIFAR10_EXPECTED}") from None
    else:
        raise DataError(f"cifar10 {path!r} not found: expected {CIFAR10_EXPECTED}")
    missing = [n for n in CIFAR10_TRAIN + (CIFAR10_TEST,) if n not in found]
    if missing:
        raise DataError(f"cifar10 {path!r} has no {', '.join(missing)}: expected {CIFAR10_EXPECTED}")
    return found


def _cifar10_names(files: dict, path: str) -> list[str] | None:
    if "batches.meta" not in files:
        return None
    meta = _str_keys(load_array_pickle(files["batches.meta"], f"cifar10 {path!r} batches.meta"), path)
    names = meta.get("label_names")
    if not isinstance(names, list) or len(names) != 10 or not all(isinstance(n, (bytes, str)) for n in names):
        return None
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


def _batches_source(batches: list[tuple[str, np.ndarray, list]], class_names) -> Source:
    starts = np.cumsum([0] + [len(b[1]) for b in batches])

    def at(i):
        b = int(np.searchsorted(starts, i, side="right")) - 1
        return batches[b], i - int(starts[b])

    def load(i):
        (_, images, _), row = at(i)
        return np.ascontiguousarray(images[row])

    def origin(i):
        (name, _, _), row = at(i)
        return f"{name}:{row}"
    labels = [v for _, _, lab in batches for v in lab]
    return Source("cifar10", int(starts[-1]), load, labels, origin, class_names=class_names)


def cifar10(path: str) -> tuple[Source, Source]:
    """``(train: data_batch_1..5, test: test_batch)`` of the CIFAR-10 python version at ``path``."""
    files = _cifar10_files(path)
    names = _cifar10_names(files, path)
    read = {n: cifar10_batch(files.pop(n), f"cifar10 {path!r} {n}") for n in CIFAR10_TRAIN + (CIFAR10_TEST,)}
    return (_batches_source([(n, *read[n]) for n in CIFAR10_TRAIN], names),
            _batches_source([(CIFAR10_TEST, *read[CIFAR10_TEST])], names))


# --- Hugging Face datasets' Parquet export -------------------------------------------------------

PARQUET_EXPECTED = "Hugging Face datasets' Parquet export: an 'image' (or 'img') column struct<bytes, path> " \
                   "and optionally an integer 'label' (or 'labels') column"


def parquet_files(spec: str) -> list[str]:
    """The sorted Parquet files of a file, a directory (its ``*.parquet``) or a glob pattern."""
    if any(c in spec for c in "*?["):
        files = sorted(f for f in glob.glob(spec) if os.path.isfile(f))
        what = f"no file matches {spec!r}"
    elif os.path.isdir(spec):
        files = sorted(glob.glob(os.path.join(glob.escape(spec), "*.parquet")))
        what = f"directory {spec!r} holds no .parquet file"
    elif os.path.isfile(spec):
        return [spec]
    else:
        raise DataError(f"parquet {spec!r} not found: expected a .parquet file, a directory of them or a glob")
    if not files:
        raise DataError(f"parquet: {what}")
    return files


def _parquet_columns(schema, path: str, label_col: str | None = None) -> tuple[str, str | None]:
    """``(image column, label column or None)`` of a file's Arrow schema, checked."""
    import pyarrow as pa
    names = schema.names
    image = next((c for c in ("image", "img") if c in names), None)
    if image is None:
        raise DataError(f"{path}: no 'image' (or 'img') column, it has {names}; expected {PARQUET_EXPECTED}")
    t = schema.field(image).type
    binary = (pa.types.is_binary, pa.types.is_large_binary)
    if pa.types.is_struct(t):
        ok = t.get_field_index("bytes") >= 0 and any(f(t.field("bytes").type) for f in binary)
    else:
        ok = any(f(t) for f in binary)
    if not ok:
        raise DataError(f"{path}: column {image!r} is {t}, expected the Image feature struct<bytes: binary, "
                        "path: string> (or binary)")
    label = label_col if label_col is not None else next((c for c in ("label", "labels") if c in names), None)
    if label is not None:
        if label not in names:
            raise DataError(f"{path}: no {label!r} column like the first file, it has {names}")
        if not pa.types.is_integer(schema.field(label).type):
            raise DataError(f"{path}: label column {label!r} is {schema.field(label).type}, expected integers")
    return image, label


def _hf_class_names(schema, label: str | None) -> list[str] | None:
    """The ClassLabel names the ``huggingface`` schema metadata gives the label column, if any."""
    try:
        info = json.loads((schema.metadata or {})[b"huggingface"])
        names = info["info"]["features"][label]["names"]
        return [str(n) for n in names] if isinstance(names, list) else None
    except (KeyError, TypeError, ValueError):
        return None


def parquet(spec: str) -> Source:
    """Hugging Face Parquet files, one row group in memory at a time: the first pass reads the label
    column and the row-group sizes; ``load(i)`` reads (and keeps) the image column of i's row group."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("parquet sources need pyarrow (pip install pyarrow)") from None
    groups, labels, image_col, label_col, names = [], [], None, None, None
    total = 0      # groups: (file, row group, its first row in the source, its first row in the file)
    for path in parquet_files(spec):
        try:
            pf = pq.ParquetFile(path)
            columns = _parquet_columns(pf.schema_arrow, path, label_col if image_col else None)
            if image_col is None:
                (image_col, label_col), names = columns, _hf_class_names(pf.schema_arrow, columns[1])
            if label_col is not None:
                col = pf.read(columns=[label_col]).column(0)
                if col.null_count:
                    raise DataError(f"{path}: {col.null_count} rows have no {label_col!r}")
                labels.extend(int(v) for v in col.to_pylist())
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{path}: not a readable Parquet file ({e}); expected {PARQUET_EXPECTED}") from None
        in_file = 0
        for g in range(pf.num_row_groups):
            groups.append((path, g, total, in_file))
            rows = pf.metadata.row_group(g).num_rows
            total, in_file = total + rows, in_file + rows
    if total == 0:
        raise DataError(f"parquet {spec!r} holds no rows")
    starts = np.array([g[2] for g in groups])
    cache: dict = {}

    def at(i):
        """``(row group index, file, row in the file)`` of sample i."""
        k = int(np.searchsorted(starts, i, side="right")) - 1
        return k, groups[k][0], groups[k][3] + i - groups[k][2]

    def load(i):
        k, path, row = at(i)
        if cache.get("group") != k:
            cache.clear()
            try:
                column = pq.ParquetFile(path).read_row_group(groups[k][1], columns=[image_col]).column(0)
            except (OSError, pa.ArrowException) as e:
                raise DataError(f"{path}: not a readable Parquet file ({e})") from None
            cache.update(group=k, values=column.to_pylist())
        value = cache["values"][i - groups[k][2]]
        data = value.get("bytes") if isinstance(value, dict) else value
        where = f"{path} row {row}"
        if not data:
            named = value.get("path") if isinstance(value, dict) else None
            raise DataError(f"{where}: column {image_col!r} has no image bytes (path {named!r}); expected the "
                            "images embedded in the file, as datasets' Parquet export writes them")
        try:
            with Image.open(io.BytesIO(data)) as im:
                return image_array(im)
        except Exception as e:
            raise DataError(f"{where}: column {image_col!r} holds bytes that are not a readable image ({e})") from None
    def origin(i):
        _, path, row = at(i)
        return f"{os.path.basename(path)}:{row}"
    return Source("parquet", total, load, labels if label_col is not None else None, origin,
                  class_names=names if label_col is not None else None)
