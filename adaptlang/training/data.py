"""Reading and checking training data: JSON Lines, CSV and Parquet through Hugging Face ``datasets``.

A data file is one table, one example per row. :func:`read_data` reads it
(``load_dataset("json" | "csv" | "parquet", data_files=..., split="train")``,
cached under adaptlang's cache folder, never over the network) and numbers
its rows, so that every later error can name the row at fault: rows count
from 1 in file order (for CSV, the header is not a row). The checks here
are the ones that need no tokenizer: the file exists and is not empty, the
fields exist (:func:`require_fields`), text fields hold text
(:func:`check_text`); rows with an empty field are dropped and counted
(:func:`drop_empty`). A held-out evaluation split is seeded
(:func:`split_eval`).
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptlang.errors import DataError, Diagnostic, UsageError, did_you_mean

__all__ = ["DataFile", "ROW", "SUPPORTED", "check_text", "columns", "drop_empty", "file_sha256", "read_data",
           "require_fields", "split_eval"]

#: File suffix -> the ``datasets`` builder that reads it.
SUPPORTED = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}

#: The column holding each example's 1-based row number in its file.
ROW = "__row__"


@dataclass(frozen=True)
class DataFile:
    """A data file as read.

    Attributes:
        path: The file.
        sha256: The sha256 of its bytes (hex).
        dataset: Its rows, with the :data:`ROW` column added.
        rows: How many rows it holds.
    """

    path: Path
    sha256: str
    dataset: Any
    rows: int

    @property
    def fields(self) -> list[str]:
        """Its column names, in file order (without :data:`ROW`)."""
        return [c for c in self.dataset.column_names if c != ROW]


def file_sha256(path: str | Path) -> str:
    """Returns the sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_data(path: str | Path) -> DataFile:
    """Reads a JSON Lines, CSV or Parquet file as a table.

    Args:
        path: The file; its suffix picks the reader (:data:`SUPPORTED`).

    Returns:
        The :class:`DataFile`.

    Raises:
        UsageError: No such file, or a suffix no reader handles.
        DataError: An empty file, or one the reader cannot parse.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(Diagnostic(f"no such data file: {path}", obj=str(path),
                                    hint="give the path of a .jsonl, .csv or .parquet file"))
    if not path.is_file():
        raise UsageError(Diagnostic(f"{path} is not a regular file", obj=str(path)))
    builder = SUPPORTED.get(path.suffix.lower())
    if builder is None:
        raise UsageError(Diagnostic(
            f"unsupported data file type '{path.suffix or '(none)'}'", obj=str(path),
            hint="use JSON Lines (.jsonl), CSV (.csv) or Parquet (.parquet)"))
    if path.stat().st_size == 0 or (builder != "parquet" and not path.read_bytes().strip()):
        raise DataError(Diagnostic(f"{path} is empty", obj=str(path), hint="it needs one example per row"))
    dataset = _load(path, builder)
    if len(dataset) == 0:
        raise DataError(Diagnostic(f"{path} holds no rows", obj=str(path),
                                   hint="it needs one example per row (a CSV header alone is no row)"))
    dataset = dataset.add_column(ROW, list(range(1, len(dataset) + 1)))
    return DataFile(path, file_sha256(path), dataset, len(dataset))


def _load(path: Path, builder: str) -> Any:
    """``datasets.load_dataset(builder, data_files=path, split="train")``, quietly, in a private cache."""
    import datasets

    from adaptlang.plan.sigcache import cache_dir
    from adaptlang.training.quiet import quiet

    root = cache_dir()
    with quiet(), (tempfile.TemporaryDirectory(prefix="adaptlang-data-") if root is None
                   else contextlib.nullcontext(root / "datasets")) as cache:
        try:
            # keep_in_memory: the table is small next to the model, and nothing outlives a temporary cache.
            return datasets.load_dataset(builder, data_files=str(path.resolve()), split="train",
                                         cache_dir=str(cache), keep_in_memory=True)
        except Exception as exc:  # pyarrow, pandas and datasets raise many kinds for a malformed file
            text = str(exc).strip().splitlines()
            cause = exc.__cause__ or exc.__context__
            detail = str(cause).strip().splitlines() if cause is not None and str(cause).strip() else []
            if "corresponds to no data" in str(exc):
                raise DataError(Diagnostic(f"{path} holds no rows", obj=str(path),
                                           hint="it needs one example per row (a CSV header alone is no row)"))
            raise DataError(Diagnostic(
                f"cannot read {path} as {'JSON Lines' if builder == 'json' else builder.upper()}: "
                f"{(detail or text or [type(exc).__name__])[0]}", obj=str(path),
                hint="JSON Lines holds one JSON object per line; CSV has a header row")) from None


def columns(dataset: Any, names: list[str]) -> dict[str, list[Any]]:
    """Some columns of ``dataset`` as Python lists, in row order.

    One conversion of the Arrow table: reading a column row by row through
    ``dataset[name]`` costs a table lookup per row (seconds for a few thousand rows).
    """
    return dataset.select_columns(list(dict.fromkeys(names))).to_dict()


def require_fields(data: DataFile, fields: dict[str, str]) -> None:
    """Checks that every field exists.

    Args:
        data: The file as read.
        fields: What each field is for -> its column name (``{"text": "sentence"}``).

    Raises:
        DataError: Naming the missing field, the file and the fields it has.
    """
    for role, name in fields.items():
        if name not in data.fields:
            raise DataError(Diagnostic(
                f"{data.path} has no field '{name}' (the {role} field)", obj=str(data.path),
                hint=did_you_mean(name, data.fields) or f"name the {role} field with --{role}-field",
                notes=("fields: " + ", ".join(data.fields),)))


def drop_empty(dataset: Any, fields: list[str]) -> tuple[Any, int]:
    """Drops rows where any of ``fields`` is missing (null) or blank text.

    Returns:
        ``(kept rows, number dropped)``.
    """
    def keep(row: dict[str, Any]) -> bool:
        return all(row[f] is not None and not (isinstance(row[f], str) and not row[f].strip()) for f in fields)

    kept = dataset.filter(keep, keep_in_memory=True)
    return kept, len(dataset) - len(kept)


def check_text(data: DataFile, dataset: Any, field: str) -> Any:
    """Checks that a text field holds strings; returns the dataset with it as text.

    CSV has no types (a column of numerals reads as numbers), so there the
    values become their text; in JSON Lines and Parquet a non-string is an error.

    Raises:
        DataError: Naming the first row whose value is not a string.
    """
    if data.path.suffix.lower() == ".csv":
        if getattr(dataset.features[field], "dtype", None) != "string":
            from datasets import Value

            dataset = dataset.cast_column(field, Value("string"))
        return dataset
    table = columns(dataset, [ROW, field])
    for row, value in zip(table[ROW], table[field]):
        if not isinstance(value, str):
            raise DataError(Diagnostic(
                f"row {row} of {data.path}: field '{field}' holds {type(value).__name__} {value!r}, not text",
                obj=str(data.path), hint=f"'{field}' must be a string in every row"))
    return dataset


def split_eval(dataset: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    """Holds out ``fraction`` of the rows for evaluation, the same rows for the same seed.

    Returns:
        ``(train rows, evaluation rows)``.

    Raises:
        UsageError: A fraction outside (0, 1), or one that leaves either part empty.
    """
    if not 0.0 < fraction < 1.0:
        raise UsageError(Diagnostic(f"--eval-split must be between 0 and 1, not {fraction:g}", obj="--eval-split",
                                    hint="for example 0.1 holds out a tenth of the rows"))
    held = round(len(dataset) * fraction)
    if held < 1 or held >= len(dataset):
        raise UsageError(Diagnostic(
            f"--eval-split {fraction:g} of {len(dataset)} rows leaves "
            f"{'no evaluation' if held < 1 else 'no training'} rows", obj="--eval-split"))
    parts = dataset.train_test_split(test_size=held, seed=seed, shuffle=True, keep_in_memory=True)
    return parts["train"], parts["test"]
