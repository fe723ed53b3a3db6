"""MkDocs hook: the benchmark results as tables and files of the site, read at build time.

Nothing in the documentation copies a measured number by hand from `benchmarks/results`:

* every file of `benchmarks/results/` (CSV tables and PNG figures) is published under
  `results/` in the site, so pages can show the figures and link the CSVs;
* a page line ``<!-- results-table: NAME.csv -->`` becomes that CSV as a Markdown table (numbers
  to 4 significant digits, a download link below) in a collapsed block, and
  ``<!-- results-table: * -->`` every CSV of the folder, each under its own heading with the
  script that writes it;
* ``<!-- results-table: NAME.csv pivot=A+B:C:V -->`` shows column V with one row per distinct
  (A, B) and one column per distinct C, in the order they first appear;
* every module of `manifold_aps` and `climate` must appear in a ``::: module`` line of some API
  page (`docs/api/`): one that does not is reported (and fails `mkdocs build --strict`).

A named CSV that does not exist stops the build with its name.
"""

from __future__ import annotations

import csv
import logging
import posixpath
import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.results_tables")

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
SITE_FOLDER = "results"  # where the results files lie in the built site
PACKAGES = ("manifold_aps", "climate")
MARKER = re.compile(r"^<!--\s*results-table:\s*(\S+)(?:\s+pivot=(\S+))?\s*-->\s*$", re.MULTILINE)
DIRECTIVE = re.compile(r"^:::\s*([\w.]+)", re.MULTILINE)
PUBLISHED = ("*.csv", "*.png")


def _cell(value: str) -> str:
    """A CSV value as a table cell: numbers to 4 significant digits, pipes escaped."""
    try:
        number = float(value)
    except ValueError:
        return value.replace("|", "\\|").replace("\n", " ")
    if number != number:  # NaN
        return "–"
    if number.is_integer() and abs(number) < 1e15 and "e" not in value.lower():
        return f"{int(number)}"
    return f"{number:.4g}"


def _pivoted(path: Path, header: list[str], body: list[list[str]], pivot: str):
    """`pivot` = "A+B:C:V": one row per (A, B), one column per value of C (its name), cells of V."""
    try:
        keys, column, value = pivot.split(":")
        index = [header.index(k) for k in keys.split("+")]
        ci, vi = header.index(column), header.index(value)
    except ValueError as err:
        raise PluginError(
            f"{path.name}: pivot={pivot!r} needs ROW+...:COLUMN:VALUE of {header}"
        ) from err
    rows: dict[tuple, dict[str, str]] = {}
    columns: list[str] = []
    for row in body:
        key = tuple(row[i] for i in index)
        if row[ci] not in columns:
            columns.append(row[ci])
        rows.setdefault(key, {})[row[ci]] = row[vi]
    new_header = [*keys.split("+"), *columns]  # the page says what the cells are
    new_body = [[*key, *(cells.get(c, "") for c in columns)] for key, cells in rows.items()]
    return new_header, new_body


def csv_table(path: Path, pivot: str | None = None) -> str:
    """The CSV file at `path` as a Markdown table (header row first), `pivot`ed if given."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise PluginError(f"{path} is empty: no table to render")
    header, body = rows[0], rows[1:]
    if pivot:
        header, body = _pivoted(path, header, body, pivot)
    lines = [
        "| " + " | ".join(_cell(h) for h in header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in body:
        row = row + [""] * (len(header) - len(row))
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def _link(page_uri: str, name: str) -> str:
    return posixpath.relpath(f"{SITE_FOLDER}/{name}", posixpath.dirname(page_uri) or ".")


def _writer(name: str) -> str:
    """The benchmark script that writes `name`: the one named like it, or the one that names it.

    (`suite-era5-uk.csv` -> suite.py, `gmrf_scaling_solvers.csv` -> gmrf_scaling.py,
    `prior_summary_rerun.csv` -> the script that writes `prior_summary.csv`.)
    """
    stem = re.sub(r"[-_]rerun$", "", Path(name).stem)
    scripts = sorted((REPO / "benchmarks").glob("*.py"))
    for candidate in (stem, stem.split("-")[0], stem.rsplit("_", 1)[0]):
        if (REPO / "benchmarks" / f"{candidate}.py").exists():
            return f"`benchmarks/{candidate}.py`"
    for script in scripts:
        if re.search(rf"\b{re.escape(stem)}\.csv", script.read_text()):
            return f"`benchmarks/{script.name}`"
    return "a benchmark script"


def _rendered(name: str, page_uri: str, heading: bool, pivot: str | None = None) -> str:
    path = RESULTS / name
    if not path.is_file():
        raise PluginError(f"{page_uri}: results-table {name!r}: no file {path}")
    text = csv_table(path, pivot)
    source = f"[`{name}`]({_link(page_uri, name)}), written by {_writer(name)}"
    if heading:
        return f"### {name}\n\n{text}\n\n{source}.\n"
    if pivot:
        return f"{text}\n\n<small>From {source}.</small>\n"
    body = "\n".join(f"    {line}" for line in f"{text}\n\nFrom {source}.".splitlines())
    return f'??? info "Every row of {name}"\n\n{body}\n'  # collapsed: pymdownx.details


def on_config(config):
    """Resolve the repository-relative paths of `mkdocs.yml` from the repository, not the cwd.

    (The snippets' base path and the griffe extension's file; so that `mkdocs build -f
    path/to/mkdocs.yml` works from any folder.)
    """
    snippets = config.mdx_configs.get("pymdownx.snippets")
    if snippets is not None:
        snippets["base_path"] = [str(REPO / p) for p in snippets.get("base_path", ["."])]
    plugin = config.plugins.get("mkdocstrings")
    if plugin is not None:
        options = plugin.config["handlers"].get("python", {}).get("options", {})
        options["extensions"] = [
            str(REPO / e) if isinstance(e, str) and (REPO / e).is_file() else e
            for e in options.get("extensions", [])
        ]
    return config


def on_files(files, config):
    """Publish every CSV, PNG and Markdown file of `benchmarks/results` under `results/`."""
    for pattern in PUBLISHED:
        for path in sorted(RESULTS.glob(pattern)):
            files.append(
                File.generated(config, f"{SITE_FOLDER}/{path.name}", abs_src_path=str(path))
            )
    return files


def on_page_markdown(markdown, page, config, files):
    """Replace each ``<!-- results-table: ... -->`` line by its table(s)."""

    def replace(match: re.Match) -> str:
        name, pivot = match.group(1), match.group(2)
        if name == "*":
            return "\n".join(
                _rendered(p.name, page.file.src_uri, heading=True)
                for p in sorted(RESULTS.glob("*.csv"))
            )
        return _rendered(name, page.file.src_uri, heading=False, pivot=pivot)

    return MARKER.sub(replace, markdown)


def _modules() -> set[str]:
    found = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def on_env(env, config, files):
    """Report each module of the packages that no API page documents."""
    documented = set()
    for file in files.documentation_pages():
        if file.src_uri.startswith("api/"):
            documented |= set(DIRECTIVE.findall(Path(file.abs_src_path).read_text()))
    for module in sorted(_modules() - documented):
        log.warning(f"module {module} is on no API page: add a '::: {module}' line to docs/api/")
    return env
