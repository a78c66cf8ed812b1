"""The DVC plots page draws its four charts with no network (``python -m pipelines.plots``, ``make plots``).

A tiny git + DVC repository gets the project's own top-level ``plots:`` of ``dvc.yaml`` and small
metric files in the shapes the stages write (``metrics/train_curve.csv``, ``val_curve.csv``,
``report/report.json``); the real ``dvc plots show/diff`` writes the page, and headless Chromium loads
it with every host name unresolvable and a proxy to nowhere. Each chart's div must then hold what
vega-embed draws: the ``marks`` SVG (or canvas) with its lines or bars, and the data's labels. The
control test shows that DVC's default page (vega from a CDN) draws none of them under the same
conditions, so the offline set-up really is offline.
"""

from __future__ import annotations

import html.parser
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pipelines import plots
from tests.pipelines.conftest import REPO, git, init_repo
from tests.serving.chromium import find_chromium

CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(CHROMIUM is None,
                                    reason="no chromium binary (Debian/Ubuntu: apt-get install -y chromium)")

#: The project's charts (dvc.yaml's top-level plots) → the marks vega draws for them.
CHARTS = {"training loss": "mark-line", "mask area": "mark-line", "validation mIoU": "mark-line",
          "mIoU per benchmark": "mark-rect"}
BENCHMARKS = {"voc": 41.5, "context": 23.25, "coco_object": 17.0}
TRAIN_COLUMNS = ["loss", "tclf_loss", "tcli_loss", "area_loss", "neg_area_loss", "tv_img_loss", "tv_mask_loss",
                 "mask_area", "neg_mask_area"]


def div_id(name: str) -> str:
    """The id DVC gives a plot's div (dvc_render: non-word characters → ``_``)."""
    return re.sub(r"\W", "_", name)


def write_metrics(root: Path, val_scale: float = 1.0) -> None:
    metrics = root / "metrics"
    (metrics / "report").mkdir(parents=True, exist_ok=True)
    rows = [",".join(["step", *TRAIN_COLUMNS])]
    rows += [",".join([str(step), *(f"{1.0 / step + 0.1 * i:.3f}" for i in range(len(TRAIN_COLUMNS)))])
             for step in range(1, 6)]
    (metrics / "train_curve.csv").write_text("\n".join(rows) + "\n")
    (metrics / "val_curve.csv").write_text("step,avg_miou\n" + "".join(
        f"{step},{step * 3.5 * val_scale:.2f}\n" for step in (2, 4, 6)))
    report = {"rows": [{"benchmark": name, "miou": miou, "training_split": False} for name, miou in BENCHMARKS.items()],
              "mean": {"miou": round(sum(BENCHMARKS.values()) / len(BENCHMARKS), 2)}}
    (metrics / "report" / "report.json").write_text(json.dumps(report, indent=2))


@pytest.fixture(scope="module")
def plots_repo(tmp_path_factory) -> Path:
    """A committed repository with the project's plot definitions and one set of metrics."""
    root = init_repo(tmp_path_factory.mktemp("plots") / "project")
    definitions = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    assert [next(iter(d)) for d in definitions] == list(CHARTS), "dvc.yaml's plots changed: update CHARTS"
    # plus an overlay folder, as the evaluate stage declares it: images go to the page's static/
    (root / "dvc.yaml").write_text(yaml.safe_dump({"plots": [*definitions, "metrics/overlays"]}, sort_keys=False))
    (root / ".gitignore").write_text("/dvc_plots/\n/default_page/\n")
    write_metrics(root)
    (root / "metrics" / "overlays").mkdir(parents=True)
    Image.new("RGB", (12, 4), (200, 30, 30)).save(root / "metrics" / "overlays" / "voc_0.png")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "metrics")
    return root


class _Charts(html.parser.HTMLParser):
    """Per chart div (by id): the classes of the elements inside it and its text (what is drawn, not the
    ``<script>`` with the spec, which holds the data's labels whether or not anything was drawn)."""

    _VOID = {"br", "img", "input", "meta", "link", "hr", "area", "base", "col", "embed", "source", "wbr"}

    def __init__(self, ids: set[str]) -> None:
        super().__init__()
        self.ids, self.classes, self.text = ids, {i: [] for i in ids}, {i: [] for i in ids}
        self._stack: list[tuple[str, str | None]] = []  # open elements: (tag, the chart it belongs to)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        current = self._stack[-1][1] if self._stack else None
        if tag == "div" and attrs.get("id") in self.ids:
            current = attrs["id"]
        if current is not None:
            self.classes[current].append(f"{tag}.{attrs.get('class') or ''}")
        if tag not in self._VOID:
            self._stack.append((tag, current))

    def handle_endtag(self, tag: str) -> None:
        if self._stack:
            self._stack.pop()

    def handle_data(self, data: str) -> None:
        if self._stack and self._stack[-1][1] is not None and self._stack[-1][0] not in {"script", "style"}:
            self.text[self._stack[-1][1]].append(data)


def load_offline(page: Path, profile: Path) -> _Charts:
    """``page`` in headless Chromium with no network at all; the DOM after the scripts ran, per chart."""
    done = subprocess.run(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
         "--virtual-time-budget=15000", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    charts = _Charts({div_id(name) for name in CHARTS})
    charts.feed(done.stdout)
    return charts


def drawn(charts: _Charts, name: str) -> bool:
    """vega-embed drew the chart: its ``marks`` SVG/canvas, with the lines or bars of the data in it."""
    classes = charts.classes[div_id(name)]
    has_marks = any(re.match(r"(svg|canvas)\..*\bmarks\b", c) for c in classes)
    return has_marks and any(CHARTS[name] in c for c in classes)


@needs_chromium
def test_the_four_charts_are_drawn_with_no_network(plots_repo, tmp_path):
    index = plots.write_page(["show"], "dvc_plots", root=plots_repo)
    assert index == plots_repo / "dvc_plots" / "index.html"
    page = index.read_text()
    assert not re.findall(r"<script[^>]*\bsrc=", page), "the page must not load any script from elsewhere"
    charts = load_offline(index, tmp_path / "profile")
    assert [name for name in CHARTS if not drawn(charts, name)] == []
    bars = "".join(charts.text[div_id("mIoU per benchmark")])
    assert all(name in bars for name in BENCHMARKS), bars  # the report's rows, one bar each
    assert "avg_miou" in "".join(charts.text[div_id("validation mIoU")])
    images = re.findall(r'<img src="(static/[^"]+\.png)"', page)  # the overlay panel, moved with the page
    assert images and all((index.parent / image).is_file() for image in images), images


@needs_chromium
def test_dvc_default_page_draws_nothing_offline(plots_repo, tmp_path):
    """The control: DVC's own template (vega from a CDN) under the same conditions draws no chart."""
    subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "-o", "default_page"], cwd=plots_repo, check=True,
                   capture_output=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    index = plots_repo / "default_page" / "index.html"
    assert "cdn.jsdelivr.net" in index.read_text()
    charts = load_offline(index, tmp_path / "profile")
    assert [name for name in CHARTS if drawn(charts, name)] == []


@needs_chromium
def test_diff_draws_each_revision_offline(plots_repo, tmp_path):
    """``diff HEAD`` (the committed metrics against changed ones in the workspace): both in each chart."""
    write_metrics(plots_repo, val_scale=2.0)
    try:
        index = plots.write_page(["diff", "HEAD"], "dvc_plots", root=plots_repo)
        charts = load_offline(index, tmp_path / "profile")
    finally:
        git(plots_repo, "checkout", "--", "metrics")
    assert [name for name in CHARTS if not drawn(charts, name)] == []
    legend = "".join(charts.text[div_id("validation mIoU")])
    assert "HEAD" in legend and "workspace" in legend, legend


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "pipelines.plots", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)


def test_cli_writes_the_page_and_a_bad_revision_keeps_the_previous_one(plots_repo):
    done = run_cli("--root", str(plots_repo), "-o", "cli_page")
    assert done.returncode == 0, done.stderr
    index = plots_repo / "cli_page" / "index.html"
    assert f"wrote {index}" in done.stdout
    assert plots.BUNDLE_PLACEHOLDER not in index.read_text() and "window.vegaEmbed" in index.read_text()
    before = index.read_bytes()

    done = run_cli("--root", str(plots_repo), "diff", "no-such-rev", "-o", "cli_page")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: dvc plots diff no-such-rev failed: unknown Git revision "
                                                "'no-such-rev'"], done.stderr
    assert index.read_bytes() == before
    assert not [p.name for p in plots_repo.iterdir() if p.name.endswith(".tmp")]  # no temporary left behind


def test_cli_refuses_an_out_that_is_not_a_plots_folder(plots_repo):
    done = run_cli("--root", str(plots_repo), "-o", "dvc.yaml")
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "not a plots page folder" in done.stderr
    assert "plots:" in (plots_repo / "dvc.yaml").read_text()


def test_cli_says_there_is_nothing_to_plot_before_the_pipeline_ran(tmp_path):
    root = init_repo(tmp_path / "fresh")
    (root / "dvc.yaml").write_text(yaml.safe_dump({"plots": yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]}))
    done = run_cli("--root", str(root))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: dvc plots show found nothing to plot (none of dvc.yaml's "
                                                "plot files exist yet): run the pipeline first (make run)"]
    assert not (root / "dvc_plots").exists()


def test_help_names_show_and_diff():
    done = run_cli("--help")
    assert done.returncode == 0
    assert "show" in done.stdout and "diff" in done.stdout and "no network" in done.stdout


def test_template_keeps_dvc_cdn_scripts_out():
    template = plots.TEMPLATE.read_text()
    assert "{plot_divs}" in template and plots.BUNDLE_PLACEHOLDER in template
    assert "{scripts}" not in template  # DVC would put its CDN <script src=...> tags there
    with pytest.raises(plots.PlotsError, match="</script"):
        plots.fill_template(template, "var a = '</script>';")
