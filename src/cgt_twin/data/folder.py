"""The campaign folder format on disk (``docs/data-format.md``): reading, and writing without ever losing data.

A campaign folder holds ``batches.csv``, ``measurements.csv``, ``events.csv`` and ``media.csv``, optionally
``variables.csv`` and ``campaign.json`` (format version, source and import notes). `read_campaign` checks it all and
raises one `CampaignValidationError` listing every problem; `write_campaign` writes to a temporary folder beside the
target and renames it into place, so an interrupted write never leaves a half-written campaign, and it refuses to
replace an existing folder unless asked.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pandas as pd

from .._atomic import atomic_folder
from .build import campaign_from_tables
from .campaign import Campaign
from .errors import CampaignValidationError, Problem, ProblemCollector
from .tables import EVENT_COLUMNS, FILE_NAMES, MEDIA_COLUMNS, VARIABLE_COLUMNS, CampaignTables

__all__ = ["read_campaign", "read_tables", "write_campaign", "write_tables", "FOLDER_FORMAT_VERSION"]

FOLDER_FORMAT_VERSION = 1
_REQUIRED = ("batches", "measurements")
_OPTIONAL_EMPTY = {"events": EVENT_COLUMNS, "media": MEDIA_COLUMNS, "variables": VARIABLE_COLUMNS}


def _read_csv(path: Path, problems: ProblemCollector) -> pd.DataFrame | None:
    """Reads one CSV as text (no type guessing: every check happens in `campaign_from_tables`)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError as exc:
        problems.add(str(path), f"cannot be read ({exc.strerror or exc})")
        return None
    if b"\x00" in head:
        problems.add(str(path), "is not a text CSV file (it contains binary data)")
        return None
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            header = next(csv.reader(handle), None)
    except UnicodeDecodeError:
        problems.add(str(path), "is not UTF-8 text; save the CSV as UTF-8")
        return None
    except csv.Error as exc:
        problems.add(str(path), f"is not a well-formed CSV ({exc})")
        return None
    if not header or all(not h.strip() for h in header):
        problems.add(str(path), "is empty (expected a header row)")
        return None
    names = [h.strip() for h in header]
    while names and names[-1] == "":  # a trailing comma after the last header name
        names.pop()
    if any(n == "" for n in names):
        problems.add(str(path), f"has {sum(n == '' for n in names)} column(s) without a header name", row=1)
        return None
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        problems.add(str(path), f"column name(s) {', '.join(duplicated)} appear more than once in the header", row=1,
                     column=duplicated[0])
        return None
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig",
                            header=0, names=names, index_col=False, usecols=range(len(names)))
    except UnicodeDecodeError:
        problems.add(str(path), "is not UTF-8 text; save the CSV as UTF-8")
        return None
    except pd.errors.EmptyDataError:
        problems.add(str(path), "is empty (expected a header row)")
        return None
    except (pd.errors.ParserError, ValueError) as exc:
        problems.add(str(path), f"is not a well-formed CSV ({str(exc).strip()})")
        return None
    return frame.where(frame != "", None)


def read_tables(path: str | os.PathLike) -> CampaignTables:
    """Reads a campaign folder's tables without checking their content (see `read_campaign`)."""
    folder = Path(path)
    problems = ProblemCollector()
    if not folder.exists():
        raise CampaignValidationError(Problem(str(folder), "campaign folder not found"))
    if not folder.is_dir():
        raise CampaignValidationError(Problem(str(folder), "is not a folder (a campaign is a folder of CSV files)"))
    frames: dict[str, pd.DataFrame | None] = {}
    for key, name in FILE_NAMES.items():
        file = folder / name
        if not file.exists():
            if key in _REQUIRED:
                problems.add(str(file), f"missing file {name} (a campaign folder needs {', '.join(FILE_NAMES[k] for k in _REQUIRED)})")
            else:
                frames[key] = pd.DataFrame({c: pd.Series(dtype=object) for c in _OPTIONAL_EMPTY[key]})
            continue
        frames[key] = _read_csv(file, problems)
    notes: list[str] = []
    meta_file = folder / "campaign.json"
    if meta_file.exists():
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            problems.add(str(meta_file), f"is not a readable JSON file ({exc})")
        else:
            if not isinstance(meta, dict):
                problems.add(str(meta_file), "expected a JSON object")
            else:
                version = meta.get("format_version", FOLDER_FORMAT_VERSION)
                if not isinstance(version, int) or isinstance(version, bool):
                    problems.add(str(meta_file), f"format_version must be a whole number, got {version!r}")
                elif version > FOLDER_FORMAT_VERSION:
                    problems.add(str(meta_file), f"format_version {version} is newer than this library reads "
                                                 f"({FOLDER_FORMAT_VERSION}); upgrade cgt_twin")
                raw_notes = meta.get("notes", [])
                if not isinstance(raw_notes, list):
                    problems.add(str(meta_file), f"notes must be a list of strings, got {type(raw_notes).__name__}")
                else:
                    notes = [str(n) for n in raw_notes]
    problems.raise_if_any(header=f"cannot read campaign {folder}")
    return CampaignTables(batches=frames["batches"], measurements=frames["measurements"], events=frames["events"],
                          media=frames["media"], variables=frames["variables"], notes=notes, source=str(folder))


def read_campaign(path: str | os.PathLike) -> Campaign:
    """Reads and checks a campaign folder.

    Raises:
        CampaignValidationError: listing every problem, each naming file, row, batch and column.
    """
    return campaign_from_tables(read_tables(path))


def write_tables(tables: CampaignTables, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Writes campaign tables as a campaign folder, atomically (see `write_campaign`)."""
    target = Path(path)
    with atomic_folder(target, overwrite=overwrite) as staging:
        for key, name in FILE_NAMES.items():
            frame = getattr(tables, key)
            if key == "variables" and (frame is None or len(frame) == 0):
                continue
            frame.to_csv(staging / name, index=False, lineterminator="\n")
        meta = {"format": "cgt_twin campaign", "format_version": FOLDER_FORMAT_VERSION, "source": tables.source,
                "notes": list(tables.notes)}
        (staging / "campaign.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return target


def write_campaign(campaign: Campaign, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Writes a campaign as a folder in canonical units.

    The folder is first written beside the target under a temporary name, then renamed into place, so an interrupted
    write leaves either the old folder or the new one, never half of one.

    Args:
        campaign: the campaign.
        path: the folder to create.
        overwrite: replace an existing folder (otherwise `FileExistsError`).

    Returns:
        The path written.
    """
    return write_tables(campaign.to_tables(), path, overwrite=overwrite)
