"""Which model is best over a whole suite of datasets, with the statistics made for that question.

A per-test-set mark (`aggregate.trust`) says whether one model beats another on one dataset. Over several datasets
the datasets are the sample (Demšar, JMLR 7, 2006; Benavoli et al., JMLR 18, 2017):

- **Friedman + Nemenyi** (autorank, `force_mode="nonparametric"`): the models are ranked on each dataset (1 = best,
  ties share the mean rank); the Friedman test asks whether the mean ranks differ at all, the Nemenyi post-hoc
  whether two of them do: two models whose mean ranks differ by more than the critical difference (CD) differ at
  `ALPHA`. Drawn as Demšar's critical-difference diagram (`figures.ranking`). With two models autorank runs the
  Wilcoxon signed-rank test instead.
- **Bayesian signed-rank** (baycomp): for the best-ranked model against each other model, the posterior
  probabilities that it is better by more than `ROPE`, practically equivalent (within ±`ROPE`), or worse.

Both treat the datasets as independent samples, so a dataset is one row however many blocks (image sizes, schemes,
split kinds) it has: each model's mean over the dataset's blocks (ranking 4 datasets at 4 sizes as 16 "datasets"
made the p-values far too small and the critical difference too narrow). Both need at least `MIN_DATASETS`
datasets (autorank's minimum); with fewer, the section shows the mean ranks and says that nothing was tested.
autorank, baycomp and scikit-posthocs are the optional extra `rank`: without them the leaderboard still builds
and the section says which extra gives it.

The rankings run on a suite's measured cells (seed means) and on the published MedMNIST+ table shipped as
`benchmark/medmnist_plus.csv` (10 pretrained backbones × 4 datasets × 4 image sizes × 3 schemes; Doerrich et al.,
Sci. Rep. 2025).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pandas as pd

from benchmark.report.aggregate import cell_stats
from benchmark.report.load import SuiteData
from benchmark.suites import RANDOM_SPLIT_SUFFIX

ALPHA = 0.05
ROPE = 0.01  # one point of ACC / AUC: a smaller difference counts as practically equivalent
BAYES_SAMPLES = 1000  # Monte Carlo samples of the Dirichlet posterior (seeded): probabilities within about ±0.03
BAYES_SEED = 0
MIN_DATASETS = 5
EXTRA = "rank"
MEDMNIST_PLUS_CSV = Path(__file__).resolve().parents[1] / "medmnist_plus.csv"
MEDMNIST_PLUS_SCHEMES = {"end_to_end": "end-to-end", "linear_probe": "linear probe", "knn": "kNN"}


def missing_extra() -> str:
    """"" when the ranking libraries import; otherwise the sentence that says which extra gives them."""
    try:
        import autorank  # noqa: F401
        import baycomp  # noqa: F401
        import scikit_posthocs  # noqa: F401
    except ImportError as err:
        return (f"The ranking tests need the `{EXTRA}` extra (autorank, baycomp, scikit-posthocs; "
                f"`pip install 'medmnist-benchmark[{EXTRA}]'`), which is not installed here ({err.name} is missing): "
                f"only the mean ranks are shown.")
    return ""


@dataclass
class Ranking:
    """One ranking: `values` (datasets × models, the metric), `mean_rank` (model → mean rank, 1 = best, sorted),
    and when tested: `test` (autorank's omnibus test), `pvalue`, `cd` (Nemenyi critical difference), `nemenyi`
    (pairwise p-values), `bayes` (the best model against each other: p_better, p_rope, p_worse), `result`
    (autorank's, for the diagram). `note` says why something was not tested."""

    key: str
    title: str
    metric: str
    values: pd.DataFrame
    mean_rank: pd.Series
    dropped: list[str] = field(default_factory=list)  # models without a value on every dataset
    dropped_datasets: list[str] = field(default_factory=list)  # datasets without a value of every model
    n_blocks: int = 0  # the rows before each dataset's blocks were averaged
    test: str = ""
    pvalue: float = float("nan")
    cd: float = float("nan")
    nemenyi: pd.DataFrame | None = None
    bayes: pd.DataFrame | None = None
    result: object = None
    note: str = ""

    @property
    def tested(self) -> bool:
        return bool(self.test)


def per_dataset(values: pd.DataFrame, dataset_of: dict[str, str]) -> pd.DataFrame:
    """One row per dataset: each model's mean over the dataset's blocks (rows), NaN unless it has all of them."""
    groups = [dataset_of[block] for block in values.index]
    incomplete = values.isna().groupby(groups).any()
    return values.groupby(groups).mean().mask(incomplete)


def complete_part(values: pd.DataFrame) -> pd.DataFrame:
    """`values` without NaN: the models, or else the datasets, that lack a value are left out; whichever can still
    be tested (`MIN_DATASETS` datasets, two models), then whichever keeps more values (a model that failed on one
    dataset of many is not dropped from every other), then the models."""
    without_models = values.dropna(axis=1, how="any")
    without_datasets = values.dropna(axis=0, how="any")
    return max((without_models, without_datasets),  # max keeps the first of equals
               key=lambda part: (part.shape[0] >= MIN_DATASETS and part.shape[1] >= 2, part.size))


def rank(values: pd.DataFrame, key: str, title: str, metric: str, dataset_of: dict[str, str] | None = None
         ) -> Ranking:
    """Rank the columns (models) of `values` (rows: blocks, higher is better) over datasets and test the ranking;
    `dataset_of` names each block's dataset (None: each block is a dataset of its own)."""
    by_dataset = per_dataset(values, dataset_of) if dataset_of else values
    complete = complete_part(by_dataset)
    dropped = sorted(set(by_dataset.columns) - set(complete.columns))
    dropped_datasets = sorted(set(by_dataset.index) - set(complete.index))
    mean_rank = complete.rank(axis=1, ascending=False, method="average").mean().sort_values(kind="stable")
    ranking = Ranking(key, title, metric, complete, mean_rank, dropped, dropped_datasets, n_blocks=len(values))
    n_models, n_datasets = complete.shape[1], complete.shape[0]
    if n_models < 2:
        ranking.note = "Fewer than two models with a value on every dataset: nothing to compare."
    elif n_datasets < MIN_DATASETS:
        ranking.note = (f"{n_datasets} dataset(s): the Friedman / Nemenyi and signed-rank tests need at least "
                        f"{MIN_DATASETS}, so the mean ranks are untested.")
    else:
        ranking.note = missing_extra()
    if ranking.note:
        return ranking
    from autorank import autorank
    from baycomp import SignedRankTest
    from scikit_posthocs import posthoc_nemenyi_friedman

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = autorank(complete, alpha=ALPHA, order="descending", force_mode="nonparametric")
    ranking.result, ranking.test, ranking.pvalue = result, str(result.omnibus), float(result.pvalue)
    ranking.cd = float(result.cd) if result.cd is not None else float("nan")
    if n_models >= 3:
        ranking.nemenyi = posthoc_nemenyi_friedman(complete.to_numpy())
        ranking.nemenyi.index = ranking.nemenyi.columns = complete.columns
    best = mean_rank.index[0]
    rows = []
    for other in mean_rank.index[1:]:
        better, rope, worse = SignedRankTest.probs(complete[best].to_numpy(float), complete[other].to_numpy(float),
                                                   rope=ROPE, nsamples=BAYES_SAMPLES, random_state=BAYES_SEED)
        rows.append({"best": best, "other": str(other), "mean_diff": float((complete[best] - complete[other]).mean()),
                     "p_better": float(better), "p_rope": float(rope), "p_worse": float(worse)})
    ranking.bayes = pd.DataFrame(rows)
    return ranking


# ----------------------------------------------------------------------------------------------------------
# What is ranked
# ----------------------------------------------------------------------------------------------------------
def suite_values(data: SuiteData, metric: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """A suite's seed means as blocks (test set at its size) × models (`model · scheme` when the suite has more
    than one scheme), and each block's dataset (a random-split test set is its dataset's too)."""
    cells = cell_stats(data.frame, metric, data.plan).dropna(subset=["mean"])
    if cells.empty:
        return pd.DataFrame(), {}
    several = cells["scheme"].nunique() > 1
    cells = cells.assign(block=[f"{d} ({s}px)" for d, s in zip(cells["dataset"], cells["size"])],
                         treatment=[f"{m} · {s or '—'}" if several else m for m, s in zip(cells["model"], cells["scheme"])])
    dataset_of = {block: test_set.removesuffix(RANDOM_SPLIT_SUFFIX)
                  for block, test_set in zip(cells["block"], cells["dataset"])}
    return cells.pivot_table(index="block", columns="treatment", values="mean", aggfunc="first").sort_index(), dataset_of


def suite_rankings(data: SuiteData) -> list[Ranking]:
    """ACC and AUC rankings of one suite's models over its datasets (a suite of one dataset has none: its
    headline table is the comparison)."""
    out = []
    for metric in ("acc", "auc"):
        values, dataset_of = suite_values(data, metric)
        if len(set(dataset_of.values())) >= 2 and values.shape[1] >= 2:
            out.append(rank(values, f"{data.suite}-{metric}", f"Suite {data.suite}", metric, dataset_of))
    return out


def load_medmnist_plus(path: Path | str = MEDMNIST_PLUS_CSV) -> pd.DataFrame:
    """The published MedMNIST+ table: dataset, model, scheme, size, acc, auc as fractions (kNN: no AUC)."""
    frame = pd.read_csv(path, comment="#")
    return frame.assign(acc=frame["acc_mean"] / 100, auc=frame["auc_mean"] / 100)


@lru_cache(maxsize=2)
def medmnist_plus_rankings(path: Path | str = MEDMNIST_PLUS_CSV) -> tuple[Ranking, ...]:
    """The published MedMNIST+ models ranked on ACC per scheme over its datasets (each the mean of its 4 sizes),
    then over all schemes (each dataset the mean of its 12 size × scheme blocks on ACC, 8 on AUC, which kNN
    lacks)."""
    table = load_medmnist_plus(path)
    out = []
    for metric in ("acc", "auc"):
        for scheme, label in MEDMNIST_PLUS_SCHEMES.items() if metric == "acc" else ():
            part = table[table["scheme"] == scheme]
            values = part.pivot_table(index=["dataset", "size"], columns="model", values=metric, aggfunc="first")
            dataset_of = {f"{d} ({s}px)": d for d, s in values.index}
            values.index = list(dataset_of)
            out.append(rank(values, f"medmnist-plus-{scheme}-{metric}", f"MedMNIST+ (published), {label}", metric,
                            dataset_of))
        part = table.dropna(subset=[metric])
        values = part.pivot_table(index=["dataset", "size", "scheme"], columns="model", values=metric, aggfunc="first")
        dataset_of = {f"{d} ({s}px, {MEDMNIST_PLUS_SCHEMES[k]})": d for d, s, k in values.index}
        values.index = list(dataset_of)
        schemes = ", ".join(MEDMNIST_PLUS_SCHEMES[k] for k in MEDMNIST_PLUS_SCHEMES if k in set(part["scheme"]))
        out.append(rank(values, f"medmnist-plus-all-{metric}", f"MedMNIST+ (published), all schemes ({schemes})",
                        metric, dataset_of))
    return tuple(out)


def all_rankings(suites: dict[str, SuiteData]) -> list[Ranking]:
    """Every suite's rankings, then the published MedMNIST+ ones."""
    return [r for data in suites.values() for r in suite_rankings(data)] + list(medmnist_plus_rankings())
