"""Dataset preparation for segbench.

Submodules (imported on demand, none of them needs torch):

* :mod:`segbench.data.cityscapes_labels` - the Cityscapes label table as data, and the
  id -> trainId / id -> category lookup tables.
* :mod:`segbench.data.synthetic` - a procedural street-scene generator that writes the
  Cityscapes on-disk layout, so the whole pipeline can run without the real data.
* :mod:`segbench.data.prepare` - turns a dataset tree into ``manifest.csv``,
  ``labels/{split}/*.png`` and ``meta.json`` (see ``docs/outputs.md``): dispatches to the
  source's module and holds the checks and writers they share.
* :mod:`segbench.data.cityscapes`, :mod:`~segbench.data.ade20k`, :mod:`~segbench.data.voc`,
  :mod:`~segbench.data.bdd100k` - one module per dataset source: its archives, layout and
  preparation (the Cityscapes one also reads the synthetic scenes).

Every problem with input data is reported as :class:`DataError`, whose message names the
offending file or value and says what to do about it.
"""

from __future__ import annotations

from typing import Sequence

from segbench.errors import UserError

__all__ = ["DataError"]


class DataError(UserError):
    """Input data that the pipeline cannot use.

    The message names the file or value at fault and says what to do. Use
    :meth:`from_problems` to report several problems at once.
    """

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        #: every individual problem found (the message may show only the first few)
        self.problems: list[str] = list(problems)

    @classmethod
    def from_problems(
        cls, header: str, problems: Sequence[str], hint: str, *, max_shown: int = 20
    ) -> "DataError":
        """Build one error listing up to ``max_shown`` problems, plus a count of the rest."""
        shown = [f"  - {p}" for p in problems[:max_shown]]
        rest = len(problems) - len(shown)
        if rest > 0:
            shown.append(f"  ... and {rest} more problem(s) not shown")
        message = f"{header} ({len(problems)} problem(s)):\n" + "\n".join(shown) + f"\n{hint}"
        return cls(message, problems)
