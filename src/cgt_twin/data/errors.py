"""The one error type for bad input, carrying every problem found.

Readers, importers and constructors never stop at the first problem: they collect a `Problem` per defect and raise
one `CampaignValidationError` with the whole list, so a user fixes a campaign in one pass. The CLI prints the list
and exits with code 2.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence


@dataclasses.dataclass(frozen=True)
class Problem:
    """One defect in the input.

    Attributes:
        file: the file it was found in (a path or a short name such as ``measurements.csv``).
        message: what is wrong and what was expected.
        row: 1-based row in the file (the header is row 1, so the first data row of a CSV is row 2), if it applies.
        batch: the batch concerned, if any.
        column: the column (or variable) concerned, if any.
    """

    file: str
    message: str
    row: int | None = None
    batch: str | None = None
    column: str | None = None

    def __str__(self) -> str:
        where = [self.file]
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.batch is not None:
            where.append(f"batch {self.batch!r}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        return f"{', '.join(where)}: {self.message}"


class CampaignValidationError(ValueError):
    """Bad input: raised with the list of every `Problem` found.

    Attributes:
        problems: the problems, in the order found.
    """

    def __init__(self, problems: Sequence[Problem] | Problem, header: str | None = None):
        if isinstance(problems, Problem):
            problems = [problems]
        self.problems: tuple[Problem, ...] = tuple(problems)
        if not self.problems:
            raise ValueError("CampaignValidationError needs at least one problem")
        n = len(self.problems)
        head = header or f"{n} problem{'s' if n != 1 else ''} found"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems))

    def __reduce__(self):  # keep the exception copyable (multiprocessing, pytest-xdist)
        return (type(self), (self.problems,))


class ProblemCollector:
    """Collects problems while checking input; `raise_if_any` raises them together."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, file: str, message: str, *, row: int | None = None, batch: object = None,
            column: str | None = None) -> None:
        self.problems.append(Problem(file=file, message=message, row=row,
                                     batch=None if batch is None else str(batch), column=column))

    def extend(self, problems: Iterable[Problem]) -> None:
        self.problems.extend(problems)

    def __bool__(self) -> bool:
        return bool(self.problems)

    def raise_if_any(self, header: str | None = None) -> None:
        if self.problems:
            raise CampaignValidationError(self.problems, header=header)
