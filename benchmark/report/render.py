"""Formatting only: the aggregates (`benchmark.report.aggregate`) as markdown (pandas `to_markdown`, tabulate),
LaTeX (pandas `Styler.to_latex`, booktabs) and CSV rows. No number is computed here.

A `Table` is a title, columns and rows of `Cell`s (text, bold / italic, a note after the text); `markdown(table)`
and `latex(table)` write it. The table builders below turn one aggregate into one `Table`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import pandas as pd

from benchmark.metrics import DETECTION_ALPHA, DETECTION_POWER, ECE_BINS, MIN_SEEDS_TO_TEST
from benchmark.report.aggregate import (
    ALL_DATASETS,
    GROUP,
    HEADLINE_METRICS,
    METRIC_LABELS,
    MetricTable,
)
from benchmark.report.load import SuitePlan
from benchmark.report.ranking import ALPHA as RANK_ALPHA
from benchmark.report.ranking import ROPE, Ranking

NOT_RUN = "not yet run"
DASH = "—"


# ----------------------------------------------------------------------------------------------------------
# Numbers as text
# ----------------------------------------------------------------------------------------------------------
def fmt(x: float | None, digits: int = 3) -> str:
    """Fixed precision; a dash when missing; never "-0.000"."""
    if x is None or pd.isna(x) or not math.isfinite(x):
        return DASH
    s = f"{x:.{digits}f}"
    return s.lstrip("-") if float(s) == 0.0 else s


def fmt_csv(x: float | None, digits: int = 6) -> str:
    """CSV number: fixed precision, empty when missing."""
    return "" if x is None or pd.isna(x) or not math.isfinite(x) else fmt(x, digits)


def fmt_p(p: float | None) -> str:
    if p is None or pd.isna(p) or not math.isfinite(p):
        return DASH
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def p_relation(p: float | None) -> str:
    """"= 0.042" or "< 0.001": a p-value after "p "."""
    text = fmt_p(p)
    return text.replace("<", "< ") if text.startswith("<") else f"= {text}"


def mean_std(mean: float, std: float) -> str:
    return fmt(mean) if pd.isna(std) else f"{fmt(mean)} ± {fmt(std)}"


def seeds_text(seeds) -> str:
    return ", ".join(map(str, seeds)) or DASH


def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", s).strip("-").lower()


# ----------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Cell:
    text: str
    bold: bool = False
    note: str = ""  # rendered after the (possibly bold) text
    italic: bool = False


@dataclass
class Table:
    title: str
    columns: list[str]
    align: str  # one of l/r/c per column
    rows: list[list[Cell]]
    rule_before: set[int] = field(default_factory=set)  # row indices preceded by \midrule (LaTeX)
    caption: str = ""  # LaTeX caption; markdown explains each kind of table once, at the end
    label: str = ""
    tex_align: str = ""  # LaTeX column spec when it differs from `align` (e.g. p{5cm} for long text)


def md_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


_TEX_MAP = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
            "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_TEX_UNICODE = {"±": r"$\pm$", "†": r"$^\dagger$", "—": "---", "·": r"$\cdot$", "≥": r"$\geq$", "<": r"$<$",
                ">": r"$>$", "×": r"$\times$", "–": "--", "−": r"$-$", "…": r"\ldots{}", "✓": r"$\checkmark$",
                "≈": r"$\approx$", "Δ": r"$\Delta$", "α": r"$\alpha$", "▾": r"$\blacktriangledown$", "š": r"\v{s}"}


def tex_escape(s: str) -> str:
    out = "".join(_TEX_MAP.get(ch, ch) for ch in s.replace("\n", " "))
    for k, v in _TEX_UNICODE.items():
        out = out.replace(k, v)
    return "".join(ch if ord(ch) < 128 else "?" for ch in out)  # anything else non-ASCII: pdflatex-safe


def _cell_text(c: Cell, escape, bold: str, italic: str) -> str:
    text = escape(c.text)
    if c.text and (c.bold or c.italic):
        text = (bold if c.bold else italic).format(text)
    note = escape(c.note) if c.note else ""
    return f"{text} {note}" if text and note else text or note


def _frame(t: Table, escape, bold: str, italic: str) -> pd.DataFrame:
    return pd.DataFrame([[_cell_text(c, escape, bold, italic) for c in row] for row in t.rows],
                        columns=[escape(c) for c in t.columns])


def markdown(t: Table) -> str:
    align = [{"r": "right", "c": "center"}.get(a, "left") for a in t.align]
    body = _frame(t, md_escape, "**{}**", "*{}*").to_markdown(index=False, disable_numparse=True, colalign=align)
    return f"#### {t.title}\n\n{body}\n"


def latex(t: Table) -> str:
    frame = _frame(t, tex_escape, r"\textbf{{{}}}", r"\textit{{{}}}")
    caption = tex_escape(t.title) + (". " + tex_escape(t.caption) if t.caption else "")
    text = frame.style.hide(axis="index").to_latex(hrules=True, column_format=t.tex_align or t.align,
                                                   caption=caption, label=t.label or None, position="htbp",
                                                   position_float="centering")
    lines = text.splitlines()
    lines.insert(lines.index(r"\centering") + 1, r"\scriptsize")
    first_row = lines.index(r"\midrule") + 1
    for i in sorted(t.rule_before, reverse=True):
        lines.insert(first_row + i, r"\midrule")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------
# Table builders
# ----------------------------------------------------------------------------------------------------------
TRUST_MARKS = {"best": "✓", "tie": "≈", "untested": "?"}
BELOW_BASELINE = "▾"  # a measured cell that does not beat the majority / prior baseline significantly
NOT_APPLICABLE = "n/a"


def cell_marks(mark: str, vs_baseline: str) -> str:
    """The marks after a cell's value: significance (✓ ≈ ?) and the baseline flag (▾)."""
    return " ".join(m for m in (TRUST_MARKS.get(mark or "", ""), BELOW_BASELINE if vs_baseline == "no" else "") if m)


def interval(mean: float, low: float, high: float) -> str:
    """The compact form of a value and its 95 % interval: `0.831 [0.80, 0.86]`."""
    return DASH if pd.isna(mean) else f"{fmt(mean)} [{fmt(low, 2)}, {fmt(high, 2)}]"


def cell_display(row: pd.Series) -> tuple[str, str]:
    """(value text, note) of one cell of a headline table."""
    status = row["status"]
    if status == "not_run":
        return "", NOT_RUN
    if status == "not_planned":
        return DASH, ""
    if status in ("failed", "missing"):
        return "", f"{'failed' if status == 'failed' else 'no value'} (0/{row['n_expected']} seeds)"
    text = mean_std(row["mean"], row["std"])
    mark = cell_marks(row["mark"], row["vs_baseline"])
    if status == "ok":
        return text, f"{mark} (n={row['n']})".lstrip()
    return text, f"{mark} ({row['n_planned']}/{row['n_expected']} seeds)†".lstrip()


def seed_rule(plan: SuitePlan | None) -> str:
    """Where the expected seeds come from."""
    return f"the seeds listed in {plan.file}" if plan else "the distinct seeds among the suite's records"


def headline_table(mt: MetricTable) -> Table:
    """One metric of one suite: groups × datasets, Average and Avg. rank, then the published rows."""
    n_measured = len(mt.measured_datasets)
    rows: list[list[Cell]] = []
    for group in mt.groups:
        model, size, scheme = group
        row = [Cell(model), Cell(str(size)), Cell(scheme or DASH), Cell("measured")]
        for dataset in mt.datasets:
            cell = mt.cell(group, dataset)
            text, note = cell_display(cell)
            row.append(Cell(text, bold=cell["mark"] == "best", note=note))
        summary = mt.row(group)
        for value, n, digits in ((summary["average"], summary["n_average"], 3),
                                 (summary["avg_rank"], summary["n_rank"], 2)):
            coverage = "" if n == n_measured or pd.isna(value) else f"({n}/{n_measured} datasets)"
            row.append(Cell(fmt(value, digits), note=coverage))
        rows.append(row)
    rule = {len(rows)} if not mt.published.empty else set()
    for (model, size, scheme, source), values in mt.published.groupby(["model", "size", "scheme", "source"],
                                                                      sort=True):
        by_dataset = dict(zip(values["dataset"], values["value"]))
        row = [Cell(model, italic=True), Cell(str(size)), Cell(scheme or DASH),
               Cell(f"published: {source}", italic=True)]
        row += [Cell(fmt(by_dataset[d]) if d in by_dataset else DASH) for d in mt.datasets]
        rows.append(row + [Cell(DASH), Cell(DASH)])
    missing = (f"'{NOT_RUN}' = no record (the suite file is unknown, so every cell counts as planned)."
               if mt.plan is None else f"'{NOT_RUN}' = planned in {mt.plan.file} but no record yet; '{DASH}' = not planned.")
    caption = (f"Mean ± sample std over completed seeds (n = seeds; {mt.n_expected} expected = {seed_rule(mt.plan)}). "
               f"† = incomplete group, averaged over the seeds that exist. {missing} {SIGNIFICANCE_CAPTION} Published "
               f"rows are copied from their source, not measured here, and excluded from marks, Average and "
               f"Avg. rank.")
    return Table(title=f"Suite {mt.suite}: test {METRIC_LABELS.get(mt.metric, mt.metric)}",
                 columns=["Model", "Size", "Scheme", "Source", *mt.datasets, "Average", "Avg. rank"],
                 align="lrll" + "c" * len(mt.datasets) + "cc", rows=rows, rule_before=rule, caption=caption,
                 label=f"tab:{slug(mt.suite)}-{slug(mt.metric)}")


SIGNIFICANCE_CAPTION = (
    "✓ (bold) = highest in its column and significantly better than both the runner-up and the baselines: "
    "against the runner-up, Welch's t-test over the seeds and the paired bootstrap over the test images, both "
    "two-sided and Holm-corrected across the suite's test sets, the larger p < 0.05; ≈ = highest, but not shown better "
    "than the runner-up or a baseline; ? = highest, untested: it or the runner-up has fewer than "
    f"{MIN_SEEDS_TO_TEST} seeds. ▾ = does not beat the majority / prior baseline (the two-level bootstrap, one-sided, "
    "p ≥ 0.05; a baseline scoring higher leaves the column unmarked).")


def compact_table(suite: str, tables: dict[str, MetricTable], trusted: pd.DataFrame) -> Table:
    """The suite's one compact headline table, per test set: a row per measured group, then the majority and
    prior baselines (italic); a column per headline metric (seed mean [95 % bootstrap interval], significance
    mark), ECE, and n = completed / expected seeds. A cell without stored predictions shows mean ± std."""
    first = tables[HEADLINE_METRICS[0]]
    recorded = first.cells[first.cells["recorded"]].reset_index(drop=True).sort_values(["dataset", *GROUP])
    by_key = trusted.set_index(["test_set", *GROUP])
    rows, rule = [], set()
    for dataset, cells in recorded.groupby("dataset", sort=True):
        if rows:
            rule.add(len(rows))
        for (model, size, scheme), cell in zip(cells[GROUP].itertuples(index=False, name=None), cells.itertuples()):
            row = [Cell(dataset), Cell(model), Cell(str(size)), Cell(scheme or DASH)]
            for metric in HEADLINE_METRICS:
                c = tables[metric].cell((model, size, scheme), dataset)
                text = interval(c["mean"], c["low"], c["high"]) if pd.notna(c["low"]) else (
                    DASH if pd.isna(c["mean"]) else mean_std(c["mean"], c["std"]))
                row.append(Cell(text, bold=c["mark"] == "best", note=cell_marks(c["mark"], c["vs_baseline"])))
            key = (dataset, model, size, scheme)
            ece = Cell(DASH)
            if key in by_key.index:
                ece = Cell(NOT_APPLICABLE) if by_key.loc[key, "not_applicable"] else Cell(fmt(by_key.loc[key, "ece"]))
            flag = "" if cell.n_planned >= cell.n_expected else "†"
            rows.append(row + [ece, Cell(f"{cell.n_planned}/{cell.n_expected}{flag}")])
        baselines = trusted[trusted["baseline"] & (trusted["test_set"] == dataset)]
        for b in baselines.itertuples(index=False):
            rows.append([Cell(dataset), Cell(b.model, italic=True), Cell(str(b.size)), Cell("baseline", italic=True),
                         *(Cell(interval(getattr(b, m), getattr(b, f"{m}_low"), getattr(b, f"{m}_high")), italic=True)
                           for m in HEADLINE_METRICS),
                         Cell(fmt(b.ece), italic=True), Cell(DASH)])
    return Table(title=f"Suite {suite}", columns=["Test set", "Model", "Size", "Scheme",
                                                  *(f"{METRIC_LABELS[m]} [95 % CI]" for m in HEADLINE_METRICS),
                                                  "ECE", "n"],
                 align="llrl" + "r" * len(HEADLINE_METRICS) + "rr", rows=rows, rule_before=rule,
                 label=f"tab:{slug(suite)}-headline",
                 caption="Test metrics: mean over completed seeds [95 % interval of that mean from a two-level "
                         "bootstrap: the test images resampled, the seed mean's training noise drawn from Student's "
                         "t; training variance and test-image noise]; "
                         f"cells without stored predictions: mean ± sample std. {SIGNIFICANCE_CAPTION} ECE: top-label, "
                         f"{ECE_BINS} bins; n/a = the scheme has no probabilities (kNN vote fractions). n = completed / "
                         "expected seeds († = incomplete). Italic: majority-class and class-prior predictors fitted on "
                         "the training labels, never marked.")


def per_class_tables(summary: pd.DataFrame, suite: str) -> list[Table]:
    tables = []
    for dataset, rows_ in summary.groupby("dataset", sort=True):
        rows, rule, previous = [], set(), None
        for r in rows_.itertuples(index=False):
            group = (r.model, r.size, r.scheme)
            if previous is not None and group != previous:
                rule.add(len(rows))
            previous = group
            support = DASH if pd.isna(r.support) else (str(int(r.support)) if float(r.support).is_integer()
                                                       else fmt(r.support, 1))
            rows.append([Cell(r.model), Cell(str(r.size)), Cell(r.scheme or DASH), Cell(str(r.class_name)),
                         Cell(fmt(r.precision)), Cell(fmt(r.recall)), Cell(fmt(r.f1)), Cell(support),
                         Cell(f"{r.n_planned}/{r.n_expected}" + ("†" if r.n_planned < r.n_expected else ""))])
        tables.append(Table(
            title=f"Suite {suite}: per-class metrics on {dataset}",
            columns=["Model", "Size", "Scheme", "Class", "Precision", "Recall", "F1", "Support", "Seeds"],
            align="lrllrrrrr", rows=rows, rule_before=rule, label=f"tab:{slug(suite)}-perclass-{slug(dataset)}",
            caption="Test precision / recall / F1 per class, mean over the completed seeds (support = test images "
                    "of the class). † = fewer seeds than expected."))
    return tables


def failed_table(failed: pd.DataFrame, suite: str) -> Table | None:
    if failed.empty:
        return None
    rows = [[Cell(r.run_id), Cell(r.dataset), Cell(str(r.size)), Cell(r.model), Cell(r.scheme or DASH),
             Cell(str(r.seed)), Cell(DASH if pd.isna(r.epoch) else str(int(r.epoch))),
             Cell(f"{r.error_type}: {r.message}")] for r in failed.itertuples(index=False)]
    return Table(title=f"Suite {suite}: failed runs",
                 columns=["Run", "Dataset", "Size", "Model", "Scheme", "Seed", "Epoch", "Error"],
                 align="llrllrrl", tex_align=r"p{3.2cm}lrllrrp{5.5cm}", rows=rows, label=f"tab:{slug(suite)}-failed",
                 caption="Runs that stopped with an error (epoch = the epoch it failed in). They contribute no "
                         "numbers to any table.")


def incomplete_table(incomplete: pd.DataFrame, suite: str, seeds: list, plan: SuitePlan | None) -> Table | None:
    if incomplete.empty:
        return None
    rows = [[Cell(r.dataset), Cell(r.model), Cell(str(r.size)), Cell(r.scheme or DASH),
             Cell(f"{len(set(r.done_seeds) & set(seeds))}/{len(seeds)}"), Cell(seeds_text(r.done_seeds)),
             Cell(seeds_text(r.failed_seeds)), Cell(seeds_text(r.missing_seeds))]
            for r in incomplete.sort_values(["model", "size", "scheme", "dataset"]).itertuples(index=False)]
    return Table(title=f"Suite {suite}: incomplete groups",
                 columns=["Dataset", "Model", "Size", "Scheme", "Completed", "Seeds done", "Failed", "Missing"],
                 align="llrlrlll", rows=rows, label=f"tab:{slug(suite)}-incomplete",
                 caption=f"Groups with fewer completed seeds than the {len(seeds)} expected, {seed_rule(plan)} "
                         f"({', '.join(map(str, seeds))}); their table cells are means over the completed seeds only.")


def pairwise_table(comparisons: list[tuple[str, str, pd.DataFrame]], suite: str, metric: str) -> Table | None:
    rows: list[list[Cell]] = []
    rule = set()
    for a, b, frame in comparisons:
        if rows:
            rule.add(len(rows))
        for r in frame.itertuples(index=False):
            is_all = r.dataset == ALL_DATASETS
            dataset = f"{'all datasets' if is_all else r.dataset} ({r.size}px)"
            schemes = f"{r.scheme_a or DASH} vs {r.scheme_b or DASH}"
            diff = ("+" if r.mean_diff > 0 and fmt(r.mean_diff) != "0.000" else "") + fmt(r.mean_diff)
            rows.append([Cell(f"{a} − {b}"), Cell(dataset, bold=is_all), Cell(schemes or DASH),
                         Cell(str(r.n) + (" datasets" if is_all else "")), Cell(fmt(r.mean_a)), Cell(fmt(r.mean_b)),
                         Cell(diff), Cell(fmt(r.std_diff)), Cell(fmt_p(r.t_pvalue)), Cell(fmt_p(r.wilcoxon_pvalue)),
                         Cell(r.note or "")])
    if not rows:
        return None
    return Table(
        title=f"Suite {suite}: paired comparisons on test {METRIC_LABELS.get(metric, metric)}",
        columns=["A − B", "Dataset", "Schemes", "n", "Mean A", "Mean B", "Diff", "Std diff", "t-test p", "Wilcoxon p",
                 "Note"],
        align="lllrrrrrrrl", tex_align=r"lllrrrrrrrp{3.5cm}", rows=rows, rule_before=rule,
        label=f"tab:{slug(suite)}-pairwise-{slug(metric)}",
        caption="Per dataset: runs paired by seed (n = seeds both models completed); paired t-test and Wilcoxon "
                "signed-rank p-values, two-sided, no correction for multiple comparisons. With a handful of seeds "
                "these tests have little power (Wilcoxon cannot go below 2^(1-n)): read them as indicative. "
                "'all datasets' = the same tests over the per-dataset means (MedMNIST+ style), one row per size and "
                "pair of schemes, each dataset counted once.")


def published_gap_table(gap: pd.DataFrame, suite: str) -> Table | None:
    if gap.empty:
        return None
    rows = []
    for r in gap.itertuples(index=False):
        row = [Cell(r.model), Cell(str(r.size)), Cell(r.scheme or DASH), Cell(r.dataset),
               Cell(METRIC_LABELS.get(r.metric, r.metric)), Cell(fmt(r.published))]
        if pd.isna(r.mean):
            row += [Cell(NOT_RUN), Cell(""), Cell(DASH), Cell(DASH), Cell(DASH)]
        else:
            row += [Cell(mean_std(r.mean, r.std)), Cell(f"{r.n}/{r.n_expected}"), Cell(f"{r.gap:+.3f}"),
                    Cell(fmt(r.gap_in_stds, 1)), Cell("same" if r.same_protocol else r.protocol or "unknown")]
        rows.append(row + [Cell(r.source, italic=True)])
    return Table(title=f"Suite {suite}: measured vs published",
                 columns=["Model", "Size", "Scheme", "Dataset", "Metric", "Published", "Measured (mean ± std)",
                          "Seeds", "Δ", "Δ / seed std", "Protocol (measured vs published)", "Source"],
                 align="lrlllrrrrrll", tex_align="lrlllrrrrrp{4.5cm}l", rows=rows,
                 label=f"tab:{slug(suite)}-published-gap",
                 caption="Δ = measured mean − published value; Δ / seed std expresses the gap in units of the "
                         "sample standard deviation over seeds (|Δ / std| > 2: a gap beyond seed noise), shown only "
                         "where the measured runs followed the published row's protocol (scheme, init, input size, "
                         "resize, split and the recipe: epochs, optimizer, lr, batch size, schedule, augmentation, "
                         "imbalance handling, checkpoint selection). Otherwise the Protocol column lists the "
                         "differences, and Δ compares different experiments.")


# ----------------------------------------------------------------------------------------------------------
# CSV
# ----------------------------------------------------------------------------------------------------------
CSV_FIELDS = ["suite", "table", "metric", "kind", "model", "size", "scheme", "source", "dataset", "class", "mean",
              "std", "ci_low", "ci_high", "n_seeds", "n_expected", "status", "best", "significance", "rank",
              "ci_images_low", "ci_images_high", "p", "vs_baseline", "detectable"]


def headline_csv_rows(mt: MetricTable, trusted: pd.DataFrame) -> list[dict]:
    """The metric's measured cells (mean, std, 95 % interval over seeds and images and over images only, `best` =
    highest mean, `significance` = best / tie / untested mark, `p` = its Holm-corrected p-value, `vs_baseline` =
    beats / no, `detectable` = the smallest difference its seeds detect), row summaries, baselines (kind
    "baseline") and published rows."""
    out = []
    n_measured = len(mt.measured_datasets)
    for group in mt.groups:
        model, size, scheme = group
        base = dict(suite=mt.suite, table="headline", metric=mt.metric, kind="measured", model=model, size=size,
                    scheme=scheme, source="measured")
        for dataset in mt.datasets:
            c = mt.cell(group, dataset)
            out.append({**base, "dataset": dataset, "mean": fmt_csv(c["mean"]), "std": fmt_csv(c["std"]),
                        "ci_low": fmt_csv(c["low"]), "ci_high": fmt_csv(c["high"]), "n_seeds": c["n"],
                        "n_expected": mt.n_expected, "status": c["status"], "best": int(c["best"]),
                        "significance": c["mark"], "rank": fmt_csv(c["rank"], 2), "ci_images_low": fmt_csv(c["img_low"]),
                        "ci_images_high": fmt_csv(c["img_high"]), "p": fmt_csv(c["p"]), "vs_baseline": c["vs_baseline"],
                        "detectable": fmt_csv(c["mdd"])})
        summary = mt.row(group)
        for name, value, n in (("AVERAGE", summary["average"], summary["n_average"]),
                               ("AVG_RANK", summary["avg_rank"], summary["n_rank"])):
            out.append({**base, "dataset": name, "mean": fmt_csv(value), "n_seeds": n, "n_expected": n_measured,
                        "status": "ok" if n == n_measured else "incomplete"})
    for r in trusted[trusted["baseline"]].itertuples(index=False):
        out.append(dict(suite=mt.suite, table="headline", metric=mt.metric, kind="baseline", model=r.model,
                        size=r.size, scheme=r.scheme, source="baseline", dataset=r.test_set,
                        mean=fmt_csv(getattr(r, mt.metric)), ci_low=fmt_csv(getattr(r, f"{mt.metric}_low")),
                        ci_high=fmt_csv(getattr(r, f"{mt.metric}_high")), status="baseline",
                        ci_images_low=fmt_csv(getattr(r, f"{mt.metric}_img_low")),
                        ci_images_high=fmt_csv(getattr(r, f"{mt.metric}_img_high"))))
    for r in mt.published.itertuples(index=False):
        out.append(dict(suite=mt.suite, table="headline", metric=mt.metric, kind="published", model=r.model,
                        size=r.size, scheme=r.scheme, source=r.source, dataset=r.dataset, mean=fmt_csv(r.value),
                        status="published"))
    return out


def per_class_csv_rows(summary: pd.DataFrame, suite: str) -> list[dict]:
    out = []
    for r in summary.itertuples(index=False):
        for metric in ("precision", "recall", "f1"):
            out.append(dict(suite=suite, table="per_class", metric=metric, kind="measured", model=r.model,
                            size=r.size, scheme=r.scheme, source="measured", dataset=r.dataset,
                            **{"class": str(r.class_name)}, mean=fmt_csv(getattr(r, metric)), n_seeds=r.n,
                            n_expected=r.n_expected, status="ok" if r.n_planned >= r.n_expected else "incomplete"))
    return out


def csv_text(rows: list[dict]) -> str:
    cleaned = [{k: ("" if row.get(k) is None or (isinstance(row.get(k), float) and pd.isna(row.get(k))) else row[k])
                for k in CSV_FIELDS} for row in rows]
    return pd.DataFrame(cleaned, columns=CSV_FIELDS).to_csv(index=False, lineterminator="\n")


def trust_table(trust: pd.DataFrame, suite: str) -> Table | None:
    """Per test set and model: ACC and AUC with their 95 % intervals (seeds and images; images only), the marks,
    MCC, QWK (ordinal sets), calibration ("n/a" for schemes without probabilities); baselines in italics."""
    if trust.empty:
        return None
    has_qwk = "qwk" in trust and trust["qwk"].notna().any()
    rows = []
    for _, row in trust.iterrows():
        baseline = bool(row["baseline"])
        cells = [Cell(row["test_set"]), Cell(row["model"], italic=baseline), Cell(str(row["size"])),
                 Cell(row["scheme"] or DASH), Cell(DASH if baseline else str(row["n"]))]
        for metric in ("acc", "auc"):
            mark = row.get(f"{metric}_mark") or ""
            cells.append(Cell(interval(row[metric], row[f"{metric}_low"], row[f"{metric}_high"]),
                              bold=mark == "best", italic=baseline,
                              note=cell_marks(mark, row.get(f"{metric}_vs_baseline") or "")))
            cells.append(Cell(f"[{fmt(row[f'{metric}_img_low'], 2)}, {fmt(row[f'{metric}_img_high'], 2)}]"
                              if pd.notna(row[metric]) else DASH, italic=baseline))
        for metric in ("mcc", *(("qwk",) if has_qwk else ()), "ece", "brier", "nll"):
            na = metric in ("ece", "brier", "nll") and row.get("not_applicable")
            cells.append(Cell(NOT_APPLICABLE if na else DASH if pd.isna(row.get(metric)) else fmt(row[metric]),
                              italic=baseline))
        rows.append(cells)
    metrics = ["MCC", *(["QWK"] if has_qwk else []), "ECE", "Brier", "NLL"]
    reasons = sorted({f"{scheme}: {reason}" for scheme, reason in zip(trust["scheme"], trust["not_applicable"])
                      if reason})
    return Table(title=f"Suite {suite}: intervals, calibration, significance",
                 columns=["Test set", "Model", "Size", "Scheme", "n", "ACC [95 % CI]", "ACC [images only]",
                          "AUC [95 % CI]", "AUC [images only]", *metrics],
                 align="llrlr" + "r" * (4 + len(metrics)), rows=rows, label=f"tab:{slug(suite)}-trust",
                 caption="Mean over seeds; [95 % CI] = interval of the seed mean from a two-level bootstrap (seeds "
                         "resampled, then the test images, 1,000 resamples): training variance and test-image "
                         "noise; [images only] = the test images resampled, the trained models held fixed. "
                         f"{SIGNIFICANCE_CAPTION} Italic rows: majority-class and class-prior predictors fitted on "
                         f"the training labels, never marked. ECE: top-label, {ECE_BINS} bins."
                         + "".join(f" n/a = {reason}." for reason in reasons))


def seeds_table(trust: pd.DataFrame, suite: str) -> Table | None:
    """Per measured row: the seed std of ACC and AUC and the smallest difference its seeds detect; on each test
    set's best row, its runner-up and the seeds per model a 0.01 difference between the two would need."""
    measured = trust[~trust["baseline"]] if not trust.empty else trust
    if measured.empty or "acc_mdd" not in measured:
        return None
    rows = []
    for _, row in measured.iterrows():
        cells = [Cell(row["test_set"]), Cell(row["model"]), Cell(str(row["size"])), Cell(row["scheme"] or DASH),
                 Cell(str(row["n"]))]
        for metric in ("acc", "auc"):
            cells += [Cell(fmt(row[f"{metric}_std"])), Cell(fmt(row[f"{metric}_mdd"]))]
        needed = row["acc_seeds_needed"]
        cells += [Cell(row["acc_runner_up"] or DASH),
                  Cell(DASH if not row["acc_runner_up"] or pd.isna(needed)  # NaN: a seed spread unknown
                       else "> 10,000" if math.isinf(needed) else str(int(needed)))]
        rows.append(cells)
    return Table(title=f"Suite {suite}: seeds needed",
                 columns=["Test set", "Model", "Size", "Scheme", "n", "ACC seed std", "ACC detectable",
                          "AUC seed std", "AUC detectable", "ACC runner-up", "Seeds for ΔACC = 0.01"],
                 align="llrlrrrrrlr", rows=rows, label=f"tab:{slug(suite)}-seeds",
                 caption=f"Detectable = the smallest difference of means that the row's n seeds (and as many for "
                         f"the other model) detect with power {DETECTION_POWER:g} at α = {DETECTION_ALPHA:g}: a "
                         "two-sided two-sample t-test on per-seed values, both models with this row's seed std "
                         "(sample std, ddof = 1); — for one seed; 0 when the seeds agree exactly. Seeds for ΔACC = "
                         "0.01 (on each test set's highest-ACC row): the seeds per model the same t-test needs to "
                         "detect a 0.01 ACC difference from its runner-up, at their pooled seed std.")


# ----------------------------------------------------------------------------------------------------------
# Rankings across datasets
# ----------------------------------------------------------------------------------------------------------
def ranking_table(r: Ranking) -> Table:
    """One ranking: models by mean rank, their mean value, the Nemenyi p-value against the best and the Bayesian
    signed-rank probabilities of the best against each (when tested); the caption says what was tested."""
    n_models, n_datasets = r.values.shape[1], r.values.shape[0]
    bayes = r.bayes.set_index("other") if r.bayes is not None else pd.DataFrame()
    best = r.mean_rank.index[0] if len(r.mean_rank) else None
    rows = []
    for position, (model, mean_rank) in enumerate(r.mean_rank.items(), start=1):
        row = [Cell(str(position)), Cell(str(model), bold=position == 1 and r.tested), Cell(fmt(mean_rank, 2)),
               Cell(fmt(r.values[model].mean()))]
        if r.tested:
            differs = r.nemenyi is not None and model != best and r.nemenyi.loc[best, model] < RANK_ALPHA
            row.append(Cell(DASH if r.nemenyi is None or model == best else fmt_p(r.nemenyi.loc[best, model]),
                            note="*" if differs else ""))
            row += ([Cell(DASH)] * 3 if model not in bayes.index else
                    [Cell(fmt(bayes.loc[model, k], 2)) for k in ("p_better", "p_rope", "p_worse")])
        rows.append(row)
    label = METRIC_LABELS.get(r.metric, r.metric)
    columns = ["#", "Model", "Mean rank", f"Mean {label}"]
    if r.tested:
        columns += ["Nemenyi p vs #1", "P(#1 better)", f"P(within ±{ROPE:g})", "P(#1 worse)"]
        caption = (f"{n_models} models ranked on each of {n_datasets} datasets (1 = best, ties share the mean rank). "
                   f"{r.test.capitalize()} test p {p_relation(r.pvalue)}"
                   + (f"; Nemenyi critical difference {fmt(r.cd, 2)} at α = {RANK_ALPHA:g}: * = differs from "
                      f"#1" if r.nemenyi is not None else "")
                   + f". Bayesian signed-rank test (baycomp, rope ±{ROPE:g}) of #1 against each model: the "
                     "posterior probability that #1 is better by more than the rope, within it, or worse.")
    else:
        caption = f"{n_models} models ranked on each of {n_datasets} dataset(s) (1 = best). Untested: {r.note}"
    if r.n_blocks > n_datasets + len(r.dropped_datasets):
        caption += (f" Each dataset is one row, every model's mean over its {r.n_blocks} blocks (sizes, schemes) "
                    f"in all: blocks of one dataset are not independent samples.")
    if r.dropped:
        caption += f" Left out (no value on every dataset): {', '.join(r.dropped)}."
    if r.dropped_datasets:
        caption += f" Datasets left out (not every model has a value): {', '.join(r.dropped_datasets)}."
    return Table(title=f"{r.title}: ranking on {label}", columns=columns, align="rlrr" + "rrrr" * r.tested, rows=rows,
                 caption=caption, label=f"tab:ranking-{slug(r.key)}")
