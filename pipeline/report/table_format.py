"""The report's :class:`Table` (string cells, written as Markdown and booktabs LaTeX) and cell formatting: one
decimal everywhere, ``n/a`` where a value does not exist, LaTeX escaping."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NA = "n/a"


def num(v: Any) -> float | None:
    """``v`` as a float; None for a missing value, a bool, a non-number or NaN."""
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        return None
    return float(v)


def fmt(v: Any, signed: bool = False) -> str:
    """One decimal for every number; ``n/a`` where there is none."""
    if isinstance(v, str):
        return v
    x = num(v)
    if x is None:
        return NA
    return f"{x:+.1f}" if signed else f"{x:.1f}"


def delta(a: Any, b: Any) -> float | None:
    """``a - b``; None when either is not a number."""
    a, b = num(a), num(b)
    return None if a is None or b is None else a - b


def latex_escape(text: str) -> str:
    """``text`` safe in a LaTeX table cell (special characters escaped, ±, Δ and → in math mode)."""
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
            "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "Δ": r"$\Delta$",
            "−": "-", "→": r"$\rightarrow$"}
    return "".join(repl.get(ch, ch) for ch in text)


@dataclass
class Table:
    """A rendered table: string cells, optional rule lines (``None`` row) between row groups."""

    stem: str
    caption: str
    columns: list[str]
    rows: list[list[str] | None]
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        body = [r for r in self.rows if r is not None]
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "|".join(":---" if i == 0 else "---:"
                                                                       for i in range(len(self.columns))) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in body]
        return "\n".join(lines)

    def latex(self) -> str:
        spec = "l" + "r" * (len(self.columns) - 1)
        out = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{latex_escape(self.caption)}}}",
               rf"\label{{tab:{self.stem.replace('_', '-')}}}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
               " & ".join(latex_escape(c) for c in self.columns) + r" \\", r"\midrule"]
        for r in self.rows:
            out.append(r"\midrule" if r is None else " & ".join(latex_escape(c) for c in r) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
        return "\n".join(out)

    def write(self, out: Path) -> str:
        md = self.markdown()
        notes = "".join(f"\n\n{n}" for n in self.notes)
        (out / f"{self.stem}.md").write_text(f"# {self.caption}\n\n{md}{notes}\n")
        (out / f"{self.stem}.tex").write_text(self.latex())
        return md + notes
