"""The results site (`benchmark report`): pages, links, numbers (== leaderboard.csv), determinism, and the overview
in headless Chromium (sort, filter, click through to a run's curves), from factory-built records."""

from __future__ import annotations

import csv
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from record_factory import FAILED, make_grid, write_records, write_suite_file

from benchmark.cli import main
from benchmark.report import render
from benchmark.report.leaderboard import write_leaderboard
from benchmark.report.site import write_site

SUITE = "unit"
DATASETS = ("breastmnist", "retinamnist")
PLANNED = (*DATASETS, "bloodmnist")  # planned without records: "not yet run"
SEEDS = (0, 1)
VOID = {"meta", "link", "img", "br", "hr", "input", "source", "wbr"}


# ----------------------------------------------------------------------------------------------------------
# A minimal DOM (html.parser): elements with attributes, children and text
# ----------------------------------------------------------------------------------------------------------
class Node:
    def __init__(self, tag: str, attrs: dict, parent: Node | None):
        self.tag, self.attrs, self.parent, self.children, self.parts = tag, attrs, parent, [], []

    @property
    def text(self) -> str:
        return " ".join("".join(self.parts).split())

    def iter(self, tag: str | None = None):
        for child in self.children:
            if tag is None or child.tag == tag:
                yield child
            yield from child.iter(tag)

    def find(self, tag: str, **attrs) -> list[Node]:
        return [n for n in self.iter(tag) if all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())]


class Tree(HTMLParser):
    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.root = self.current = Node("#root", {}, None)
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_endtag(self, tag):
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        assert node is not None, f"unmatched </{tag}>"
        self.current = node.parent

    def handle_data(self, data):
        node = self.current
        while node is not None:
            node.parts.append(data)
            node = node.parent


def parse(path: Path) -> Node:
    return Tree(path.read_text(encoding="utf-8")).root


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    write_records(make_grid(suite=SUITE, datasets=DATASETS, seeds=SEEDS), root / "runs")
    write_suite_file(root / "suites", SUITE, datasets=PLANNED, seeds=SEEDS)
    write_leaderboard(root / "runs", root, suites_dir=root / "suites")
    write_site(root / "runs", root / "site", figures=root / "figures", dpi=40, suites_dir=root / "suites")
    return root


def _csv_rows(root: Path) -> dict[tuple, dict]:
    with open(root / "leaderboard.csv", encoding="utf-8") as f:
        return {(r["metric"], r["model"], r["size"], r["scheme"], r["dataset"]): r for r in csv.DictReader(f)
                if r["table"] == "headline" and r["kind"] == "measured"}


def test_pages_and_no_dead_internal_link(site):
    out = site / "site"
    pages = {p.relative_to(out).as_posix() for p in out.rglob("*.html")}
    records = sorted(p.stem for p in (site / "runs" / SUITE).glob("*.json"))
    cells = {f"{SUITE}/cells/{m}-28-{s}-{d}.html" for m, s in (("resnet18_28", "from_scratch"), ("vit_b16", "fine_tune"))
             for d in DATASETS}
    assert pages == {"index.html", "compare.html", "ranking.html", "robustness.html", "learning.html", *cells,
                     *(f"{SUITE}/runs/{r}.html" for r in records)}
    assert {p.name for p in (out / "assets").iterdir()} == {"site.css", "site.js"}
    linked_figures = set()
    for page in sorted(out.rglob("*.html")):
        tree = parse(page)
        ids = {n.attrs["id"] for n in tree.iter() if "id" in n.attrs}
        for node in tree.iter():
            target = node.attrs.get("href") or node.attrs.get("src")
            if node.tag not in ("a", "link", "script", "img") or target is None:
                continue
            url = urlsplit(target)
            assert not url.scheme and not url.netloc, f"{page.name}: external resource {target}"  # offline
            if not url.path:
                assert url.fragment in ids, f"{page.name}: dead anchor {target}"
                continue
            resolved = (page.parent / unquote(url.path)).resolve()
            assert resolved.is_file(), f"{page.relative_to(out)}: dead link {target}"
            if url.fragment:
                assert f'id="{url.fragment}"' in resolved.read_text(encoding="utf-8"), f"dead anchor {target}"
            if node.tag == "img":
                linked_figures.add(resolved.relative_to(site / "figures").as_posix())
    # figures are linked from the figures folder, never copied into the site; every run's curves are shown
    assert not list(out.rglob("*.png"))
    assert {f"{SUITE}/runs/{r}_curves.png" for r in records} <= linked_figures
    assert {f"{SUITE}/heatmap_acc.png", f"{SUITE}/samples_breastmnist-28.png"} <= linked_figures


def test_cell_opens_its_runs_and_run_pages_hold_everything(site):
    out = site / "site"
    index = parse(out / "index.html")
    (table,) = index.find("table", id=f"{SUITE}-acc")
    (row,) = [r for r in table.find("tr", data_kind="measured") if r.attrs["data-model"] == "vit_b16"]
    (cell,) = row.find("td", data_dataset="breastmnist")
    (a,) = cell.find("a")
    cell_page = (out / a.attrs["href"]).resolve()
    runs = [n for n in parse(cell_page).iter("a") if "/runs/" in (cell_page.parent / n.attrs["href"]).as_posix()]
    assert [n.text for n in runs] == sorted(p.stem for p in (site / "runs" / SUITE).glob("breastmnist-28-vit_b16-*"))
    run = parse((cell_page.parent / runs[0].attrs["href"]).resolve())
    text = run.text
    for heading in ("Test metrics", "Figures", "Per-class test metrics", "Config", "Provenance", "Versions", "Data"):
        assert heading in [h.text for h in run.iter("h2")] + [h.text for h in run.iter("h3")], heading
    assert "0" * 40 in text and "Config hash" in text  # the git commit, the config hash
    alts = [img.attrs["alt"] for img in run.iter("img")]
    assert alts == ["Training curves", "Confusion matrix", "ROC curves", "Confidence histogram",
                    "Reliability diagram", "Test images with predictions"]
    failed = parse(out / f"{SUITE}/runs/{_failed_run_id(site)}.html")
    assert "Failed" in [h.text for h in failed.iter("h2")] and "CUDA out of memory" in failed.text
    assert [img.attrs["alt"] for img in failed.iter("img")] == ["Training curves"]


def _failed_run_id(site: Path) -> str:
    dataset, model, seed = FAILED
    (path,) = (site / "runs" / SUITE).glob(f"{dataset}-28-{model}-s{seed}-*.json")
    return path.stem


def test_overview_numbers_equal_leaderboard_csv(site):
    expected = _csv_rows(site)
    index = parse(site / "site" / "index.html")
    seen = 0
    for metric in ("acc", "auc", "f1_macro", "balanced_acc"):
        (table,) = index.find("table", id=f"{SUITE}-{render.slug(metric)}")
        heads = [th.text for th in table.iter("th")]
        assert heads[-len(PLANNED) - 2:] == [*sorted(PLANNED), "Average", "Avg. rank"]
        for row in table.find("tr", data_kind="measured"):
            key = (metric, row.attrs["data-model"], row.attrs["data-size"], row.attrs["data-scheme"])
            for td in row.iter("td"):
                dataset = td.attrs.get("data-dataset")
                if dataset is None:
                    continue
                csv_row = expected[(*key, dataset)]
                assert td.attrs["data-sort"] == csv_row["mean"]
                if csv_row["status"] == "not_run":
                    assert td.text == render.NOT_RUN
                else:
                    assert td.text.split()[0] == render.fmt(float(csv_row["mean"]))
                    assert (td.find("strong") != []) == (csv_row["significance"] == "best")
                seen += 1
            cells = list(row.iter("td"))
            for name, td in (("AVERAGE", cells[-2]), ("AVG_RANK", cells[-1])):
                assert td.attrs["data-sort"] == expected[(*key, name)]["mean"]
        published = table.find("tr", data_kind="published")  # MedMNIST v2 and ViT rows: ACC and AUC only
        assert bool(published) == (metric in ("acc", "auc"))
        assert all("published" in r.attrs["class"] and "data-sort" not in r.children[4].attrs for r in published)
    assert seen == 4 * 2 * len(PLANNED)


def _markdown_rows(site: Path) -> set[tuple]:
    markdown = (site / "leaderboard.md").read_text(encoding="utf-8")
    return {tuple(c.strip() for c in line.strip().strip("|").split("|")) for line in markdown.splitlines()
            if line.startswith("|")}


def _as_markdown(row: Node) -> tuple:
    """A site table row's cells as leaderboard.md writes them: **bold** / *italic* text, then the note."""
    out = []
    for td in row.iter("td"):
        styled = td.find("strong") or td.find("em")
        notes = td.find("span", **{"class": "note"})
        text = (styled[0].text if styled else td.text.removesuffix(notes[0].text if notes else "").strip())
        text = text.replace("|", "\\|")
        text = f"**{text}**" if td.find("strong") else f"*{text}*" if td.find("em") else text
        out.append(f"{text} {notes[0].text}" if notes else text)
    return tuple(out)


def test_compare_page_has_the_leaderboard_numbers(site):
    md_rows = _markdown_rows(site)
    compare = parse(site / "site" / "compare.html")
    tables = list(compare.iter("table"))
    assert len(tables) == 3  # measured vs published, paired ACC, paired AUC
    n = 0
    for table in tables:
        for row in table.iter("tr"):
            if list(row.iter("td")):
                assert _as_markdown(row) in md_rows, row.text
                n += 1
    assert n >= 5


def test_overview_headline_is_the_leaderboard_headline(site):
    md_rows = _markdown_rows(site)
    (table,) = parse(site / "site" / "index.html").find("table", id=f"{SUITE}-headline")
    rows = [row for row in table.iter("tr") if list(row.iter("td"))]
    assert len(rows) == 2 * len(DATASETS)  # two models per measured dataset; the records store no class counts
    assert all(_as_markdown(row) in md_rows for row in rows)
    assert all("[" in td.text for row in rows for td in list(row.iter("td"))[4:8])  # intervals


def test_byte_identical_and_updated_in_place(site, tmp_path):
    again = site / "site-again"
    write_site(site / "runs", again, figures=site / "figures", dpi=40, suites_dir=site / "suites")
    first = {p.relative_to(site / "site"): p.read_bytes() for p in (site / "site").rglob("*") if p.is_file()}
    second = {p.relative_to(again): p.read_bytes() for p in again.rglob("*") if p.is_file()}
    assert first == second
    # a run that is gone loses its page; a folder that is not a site is refused
    (again / SUITE / "runs" / "old-run.html").write_text("stale", encoding="utf-8")
    assert main(["report", "--runs", str(site / "runs"), "--output", str(again), "--figures", str(site / "figures"),
                 "--quiet"]) == 0
    assert not (again / SUITE / "runs" / "old-run.html").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine", encoding="utf-8")
    assert main(["report", "--runs", str(site / "runs"), "--output", str(other), "--quiet"]) == 2
    assert (other / "notes.txt").read_text(encoding="utf-8") == "mine" and len(list(other.iterdir())) == 1


# ----------------------------------------------------------------------------------------------------------
# In a real browser
# ----------------------------------------------------------------------------------------------------------
def _browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    chromium = next((p for p in ("chromium", "chromium-browser", "google-chrome") if shutil.which(p)), None)
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver (apt-get install -y "
                    "chromium chromium-driver)")
    options = Options()
    options.binary_location = shutil.which(chromium)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def _errors(browser) -> list:
    return [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def _column(browser, table_id: str, dataset: str) -> list[tuple[str, str]]:
    """(model, data-sort) of the visible measured rows of a table, in page order; then the published rows' models."""
    return browser.execute_script(
        "return Array.from(document.getElementById(arguments[0]).tBodies[0].rows).map(r => [r.dataset.kind, "
        "r.dataset.model, (r.querySelector('td[data-dataset=\"' + arguments[1] + '\"]') || {}).dataset?.sort ?? ''])",
        table_id, dataset)


def test_overview_in_headless_chromium(site, tmp_path):
    from PIL import Image, ImageStat
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser = _browser()
    try:
        browser.get((site / "site" / "index.html").resolve().as_uri())
        assert _errors(browser) == []
        shot = tmp_path / "overview.png"
        browser.save_screenshot(str(shot))
        with Image.open(shot) as image:
            assert image.width >= 1000 and max(ImageStat.Stat(image.convert("L")).stddev) > 20  # not blank

        table_id = f"{SUITE}-acc"
        before = _column(browser, table_id, "breastmnist")
        measured = [(m, float(v)) for kind, m, v in before if kind == "measured"]
        header = browser.find_element(By.CSS_SELECTOR, f"#{table_id} th[data-dataset=breastmnist]")
        for direction in ("descending", "ascending"):
            header.click()
            assert header.get_attribute("aria-sort") == direction
            after = _column(browser, table_id, "breastmnist")
            want = sorted(measured, key=lambda mv: mv[1], reverse=direction == "descending")
            assert [(m, float(v)) for kind, m, v in after if kind == "measured"] == want
            assert [k for k, _, _ in after] == [k for k, _, _ in sorted(before, key=lambda r: r[0] == "published")]
            assert [m for kind, m, _ in after if kind == "published"] == [m for k, m, _ in before if k == "published"]
        assert [m for m, _ in want] != [m for m, _ in sorted(measured, key=lambda mv: -mv[1])]  # the order changed

        section = browser.find_element(By.CSS_SELECTOR, f"section[data-suite={SUITE}]")
        Select(section.find_element(By.CSS_SELECTOR, "select[data-filter=dataset]")).select_by_value("retinamnist")
        shown = {e.get_attribute("data-dataset") for e in browser.find_elements(By.CSS_SELECTOR, f"#{table_id} [data-dataset]")
                 if e.is_displayed()}
        assert shown == {"retinamnist"}
        Select(section.find_element(By.CSS_SELECTOR, "select[data-filter=model]")).select_by_value("vit_b16")
        rows = [r for r in browser.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr") if r.is_displayed()]
        assert rows and {r.get_attribute("data-model") for r in rows} == {"vit_b16"}
        assert any(r.get_attribute("data-kind") == "published" for r in rows)  # published vit_b16 row too
        Select(section.find_element(By.CSS_SELECTOR, "select[data-control=metric]")).select_by_value("auc")
        assert not browser.find_element(By.ID, table_id).is_displayed()
        assert browser.find_element(By.ID, f"{SUITE}-auc").is_displayed()

        browser.find_element(By.CSS_SELECTOR, f"#{SUITE}-auc tr[data-model=vit_b16] td[data-dataset=retinamnist] a").click()
        WebDriverWait(browser, 10).until(lambda b: "/cells/" in b.current_url)
        assert _errors(browser) == []
        browser.find_element(By.CSS_SELECTOR, "td a[href*='runs/']").click()
        WebDriverWait(browser, 10).until(lambda b: "/runs/" in b.current_url)
        curves = browser.find_element(By.CSS_SELECTOR, "img[alt='Training curves']")
        WebDriverWait(browser, 10).until(lambda b: b.execute_script("return arguments[0].complete", curves))
        assert browser.execute_script("return arguments[0].naturalWidth", curves) > 0
        assert _errors(browser) == []
    finally:
        browser.quit()
