"""The results store: one parquet file per row on disk, one polars frame in memory.

A row lives in `<config_hash>.parquet`, so a re-run of a configuration replaces
its row instead of duplicating it, and two processes writing different rows
never touch the same file. Every write goes to a hidden temporary file in the
same folder and is then renamed into place (`os.replace` is atomic on one
file system), so a reader, or a process killed with SIGKILL mid-write, never
sees half a row. Anything else in the folder that is not a readable result
file is skipped with a warning that names it.
"""
from __future__ import annotations

import datetime as dt
import enum
import os
import threading
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import polars as pl

KEY = "config_hash"
SUFFIX = ".parquet"
ENV = "EXPLORER_STORE"  # overrides the default folder, e.g. for a workshop's shared drive


def default_path() -> Path:
    """`$EXPLORER_STORE`, else a per-user cache folder (platformdirs when installed)."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    try:
        from platformdirs import user_cache_dir

        base = Path(user_cache_dir("tradeoff-explorer", appauthor=False))
    except ImportError:  # platformdirs is optional; this is its answer on Linux
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tradeoff-explorer"
    return base / "results"


class Store:
    """Finished runs, keyed by `config_hash`.

    `Store()` uses the per-user default folder; `Store("results/")` any other.
    Safe for several writers at once (notebook kernels, sweep workers): each row
    is its own file and lands by an atomic rename.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise ValueError(f"Store path={path!r}; give a folder path (str or pathlib.Path) or None for the default")
        self.path = (Path(path).expanduser() if path is not None else default_path()).resolve()
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"Store path={str(self.path)!r} is a file; give a folder")
        self.path.mkdir(parents=True, exist_ok=True)
        # file name -> ((mtime_ns, size), frame or None when unreadable); lets frame() re-read only new files
        self._cache: dict[str, tuple[tuple[int, int], pl.DataFrame | None]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, {len(self)} rows)"

    def __len__(self) -> int:
        return len(self.hashes())

    def __contains__(self, config_hash: object) -> bool:
        return isinstance(config_hash, str) and self.has(config_hash)

    # -- writing ---------------------------------------------------------------

    def add(self, rows: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> list[str]:
        """Write one row (a dict from `explorer.run`) or several; return their config hashes."""
        rows = [rows] if isinstance(rows, Mapping) else list(rows)
        frames = [(check_row(r), to_frame(r)) for r in rows]  # validate all before writing any
        for key, frame in frames:
            self._write(key, frame)
        return [key for key, _ in frames]

    def _write(self, key: str, frame: pl.DataFrame) -> None:
        final = self.path / f"{key}{SUFFIX}"
        # Hidden, unique per writer, and not ending in .parquet, so readers never list it.
        tmp = self.path / f".{key}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as fh:
                frame.write_parquet(fh)
                fh.flush()
                os.fsync(fh.fileno())  # the rename must not reach the disk before the data
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    # -- reading ---------------------------------------------------------------

    def has(self, config_hash: str) -> bool:
        """Whether a readable row with this hash is in the store (a corrupt file does not count)."""
        return config_hash in self.hashes()

    def hashes(self) -> set[str]:
        """Config hashes of every readable row."""
        return {h for f in self._frames() for h in f[KEY].to_list()}

    def frame(self) -> pl.DataFrame:
        """Every row as one polars frame; techniques with different knobs share it (missing cells are null)."""
        frames = self._frames()
        if not frames:
            return pl.DataFrame(schema={KEY: pl.String})
        df = concat(frames)
        if "created_at" in df.columns:  # a hash in two files (a copied batch): keep the newer row
            df = df.sort("created_at", nulls_last=False, maintain_order=True)
        return df.unique(subset=KEY, keep="last", maintain_order=True)

    def _frames(self) -> list[pl.DataFrame]:
        with self._lock:
            seen: dict[str, tuple[tuple[int, int], pl.DataFrame | None]] = {}
            for entry in sorted(os.scandir(self.path), key=lambda e: e.name):
                if entry.name.startswith(".") or not entry.is_file():
                    continue  # writes in progress, editor backups, sub-folders
                try:
                    st = entry.stat()
                except FileNotFoundError:  # replaced or removed by another writer just now
                    continue
                sig = (st.st_mtime_ns, st.st_size)
                cached = self._cache.get(entry.name)
                seen[entry.name] = cached if cached and cached[0] == sig else (sig, read_row_file(Path(entry.path)))
            self._cache = seen
            return [f for _, f in seen.values() if f is not None]


def read_row_file(file: Path) -> pl.DataFrame | None:
    """The rows in one file, or None with a warning naming the file when it is not ours."""
    if not file.name.endswith(SUFFIX):
        warnings.warn(f"results store: skipping {file}: not a parquet result file", stacklevel=4)
        return None
    try:
        df = pl.read_parquet(file)
    except Exception as err:  # polars raises several error types for truncated or foreign bytes
        warnings.warn(f"results store: skipping {file}: unreadable parquet ({type(err).__name__}: "
                      f"{str(err).splitlines()[0] if str(err) else ''})", stacklevel=4)
        return None
    if KEY not in df.columns or df.schema[KEY] != pl.String or df[KEY].null_count():
        warnings.warn(f"results store: skipping {file}: no {KEY!r} column, so not a result row", stacklevel=4)
        return None
    return df


def check_row(row: Mapping[str, Any]) -> str:
    if not isinstance(row, Mapping):
        raise ValueError(f"row={row!r}; a row is a dict such as explorer.run returns")
    key = row.get(KEY)
    if not isinstance(key, str) or not key or any(c in key for c in "/\\.") or key.startswith("."):
        raise ValueError(f"row {KEY}={key!r}; every stored row needs a {KEY} string (explorer.run adds one)")
    return key


def plain(value: Any) -> Any:
    """A value parquet can hold: enums by value, numpy as Python, tuples as lists, nested records
    (Sampling's per-problem samples) as they are, anything exotic as its str."""
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if value is None or isinstance(value, (bool, int, float, str, dt.date, dt.datetime)):
        return value
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy scalars and arrays
        return plain(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return str(value)


def to_frame(row: Mapping[str, Any]) -> pl.DataFrame:
    return pl.DataFrame([{k: plain(v) for k, v in row.items()}])


def concat(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Diagonal concat: rows from techniques with different knobs get nulls where a column is not theirs."""
    try:
        return pl.concat(frames, how="diagonal_relaxed")
    except (pl.exceptions.SchemaError, pl.exceptions.ComputeError, pl.exceptions.InvalidOperationError):
        # A column that is a number in one file and text in another (a knob whose type changed):
        # keep every row by reading that column as text everywhere.
        dtypes: dict[str, set] = {}
        for f in frames:
            for name, dtype in f.schema.items():
                dtypes.setdefault(name, set()).add(dtype)
        clash = {n for n, ds in dtypes.items() if len(ds - {pl.Null}) > 1}
        frames = [f.with_columns([pl.col(c).cast(pl.String) for c in clash if c in f.columns]) for f in frames]
        return pl.concat(frames, how="diagonal_relaxed")
