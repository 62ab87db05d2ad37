"""``tokcal report``: one self-contained HTML report (and optional diagram files) from evaluation JSONs."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import ValidationError
from . import app
from .common import console, friendly_errors, refuse_overwrite, require_creatable_dir


def parse_named_paths(items: list[str]) -> dict[str, Path]:
    """``NAME=PATH`` or ``PATH`` (named by the file's stem) -> ``{name: path}``; names must be unique."""
    named: dict[str, Path] = {}
    for item in items:
        name, sep, rest = item.partition("=")
        if sep and name and rest and not Path(item).exists():
            key, path = name, Path(rest)
        else:
            key, path = Path(item).stem, Path(item)
        if key in named:
            raise ValidationError(f"two evaluations are named {key!r}; name them apart with NAME=PATH")
        named[key] = path
    return named


@app.command()
@friendly_errors
def report(
    evaluations: list[str] = typer.Argument(..., help="EVAL.json files written by `tokcal evaluate --json`, "
                                             "as PATH (named by its stem) or NAME=PATH; drawn in this order."),
    out: Path | None = typer.Option(None, "-o", "--out", help="The HTML report to write."),
    markdown: Path | None = typer.Option(None, "--markdown", help="Also (or only) write a Markdown summary here, "
                                                                  "for a model card or a pull request."),
    recommend: str | None = typer.Option(None, "--recommend", help="NAME of the evaluation the headline and next "
                                                                   "steps speak of (default: the lowest ECE)."),
    png_dir: Path | None = typer.Option(None, "--png-dir", help="Also write the diagrams as PNG and SVG here."),
    title: str = typer.Option("tokcal calibration report", "--title", help="Title of the report."),
) -> None:
    """Write one self-contained HTML report (no network needed) and/or a Markdown summary of EVALUATIONS."""
    from ..report import load_evaluation, save_diagrams, write_html
    from ..report.markdown import write_markdown

    if out is None and markdown is None:
        raise ValidationError("give -o/--out (HTML report) or --markdown (summary), or both")
    named = parse_named_paths(evaluations)
    refuse_overwrite({"--out": out, "--markdown": markdown, "--png-dir": png_dir}, named.values())
    if recommend is not None and recommend not in named:
        raise ValidationError(f"--recommend {recommend!r}: not one of the evaluations ({', '.join(named)})")
    if png_dir is not None:
        require_creatable_dir("--png-dir", png_dir)
    evs = {name: load_evaluation(path) for name, path in named.items()}
    files = {"evaluations": {name: str(path) for name, path in named.items()}}
    if out is not None:
        write_html(out, evs, title=title, recommended=recommend, files=files)
        console.print(f"wrote {out}", highlight=False)
    if markdown is not None:
        write_markdown(markdown, evs, title=title, recommended=recommend, files=files)
        console.print(f"wrote {markdown}", highlight=False)
    if png_dir is not None:
        for path in save_diagrams(evs, png_dir, formats=("png", "svg")):
            console.print(f"wrote {path}", highlight=False)
