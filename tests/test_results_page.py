"""The results page is assembled from the run's files, word for word, with time per rule summed
from Snakemake's benchmark files and a record of what produced the numbers."""
from pathlib import Path

import pytest

from sglora.io import SGLoraError
from sglora.analyses.results_page import rule_times, write_results_page

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def bench(path: Path, wall: float, cpu: float, rss: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{wall}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t50\t{cpu}\n")


@pytest.fixture
def run(tmp_path) -> Path:
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "in_dataset.md").write_text("**In-dataset**\n\n| Method | I2T R@1 |\n|---|---:|\n| Oracle | 21.92 |\n")
    (tables / "in_dataset.paired.md").write_text("**SG-LoRA minus each method**\n\n| Method | I2T R@1 |\n")
    (tables / "seen.md").write_text("**Seen**\n\n| Method | I2T R@1 |\n|---|---:|\n| Oracle | 30.00 |\n")
    (tmp_path / "premises.md").write_text("**Benchmark premises**\n\n| premise | value |\n")
    bench(tmp_path / "benchmarks/train_lora/world/a.tsv", 20.0, 30.0, 700.0)
    bench(tmp_path / "benchmarks/train_lora/world/b.tsv", 40.0, 90.0, 735.5)
    bench(tmp_path / "benchmarks/assemble.tsv", 72.0, 3.0, 350.0)  # a warm job: little CPU in its own process
    return tmp_path


def test_rule_times_sum_each_rules_jobs(run):
    times = {t.rule: t for t in rule_times(run / "benchmarks")}
    assert set(times) == {"train_lora", "assemble"}
    lora = times["train_lora"]
    assert (lora.jobs, lora.wall_s, lora.cpu_s, lora.max_rss_mb) == (2, 60.0, 120.0, 735.5)
    assert [t.rule for t in rule_times(run / "benchmarks")] == ["assemble", "train_lora"]  # most job time first


def test_the_page_holds_every_table_word_for_word(run):
    out = run / "docs" / "results.md"
    out.parent.mkdir()
    write_results_page(out, "Results of a run", run / "tables", ["in_dataset", "seen"], ["in_dataset"],
                       run / "premises.md", run / "benchmarks", threads=1, source="config.yaml")
    page = out.read_text()
    assert page.startswith("# Results of a run\n")
    for f in ["tables/in_dataset.md", "tables/in_dataset.paired.md", "tables/seen.md", "premises.md"]:
        assert (run / f).read_text().strip() in page, f
    # in the order premises, then each group with its paired table
    order = [page.index(s) for s in ["**Benchmark premises**", "**In-dataset**", "**SG-LoRA minus", "**Seen**"]]
    assert order == sorted(order)
    assert "| train_lora | 2 | 1.0 | 2.0 | 736 |" in page
    assert "| **all** | 3 | 2.2 | 2.0 | |" in page
    import torch

    assert f"| cpu capability | {torch.backends.cpu.get_cpu_capability()} |" in page
    assert f"| torch | {torch.__version__} |" in page
    assert "| threads per job | 1 |" in page
    assert "(config.yaml)" in page


def test_a_groups_controls_table_follows_its_paired_table(run):
    (run / "tables" / "in_dataset.controls.md").write_text("**Description controls: in_dataset**\n\n| control |\n")
    out = run / "results.md"
    write_results_page(out, "Results", run / "tables", ["in_dataset", "seen"], ["in_dataset"], run / "premises.md",
                       None, threads=1, controls=["in_dataset"])
    page = out.read_text()
    order = [page.index(s) for s in ["**In-dataset**", "**SG-LoRA minus", "**Description controls", "**Seen**"]]
    assert order == sorted(order)
    write_results_page(out, "Results", run / "tables", ["in_dataset"], ["in_dataset"], run / "premises.md", None,
                       threads=1)
    assert "Description controls" not in out.read_text()  # only the groups named


def test_the_caption_quality_follows_the_premises(run):
    (run / "quality.md").write_text("**Caption quality** (share of captions)\n\n| attribute |\n")
    out = run / "results.md"
    write_results_page(out, "Results", run / "tables", ["in_dataset"], ["in_dataset"], run / "premises.md", None,
                       threads=1, captions=run / "quality.md")
    page = out.read_text()
    order = [page.index(s) for s in ["**Benchmark premises**", "## Captions", "**Caption quality**", "**In-dataset**"]]
    assert order == sorted(order)
    with pytest.raises(SGLoraError, match="caption quality"):
        write_results_page(out, "Results", run / "tables", ["in_dataset"], [], None, None, threads=1,
                           captions=run / "absent.md")


def test_a_missing_table_is_named_and_nothing_is_written(run):
    out = run / "results.md"
    with pytest.raises(SGLoraError, match=r"cross_dataset"):
        write_results_page(out, "t", run / "tables", ["in_dataset", "cross_dataset"], [], None, None, threads=1)
    assert not out.exists()


def test_a_broken_benchmark_file_is_named(run):
    (run / "benchmarks/assemble.tsv").write_text(HEADER + "12.0\tx\n")
    with pytest.raises(SGLoraError, match=r"assemble\.tsv"):
        rule_times(run / "benchmarks")


def test_a_warm_job_counts_its_childs_cpu_and_memory_from_its_log(run):
    """Snakemake measured only a warm job's own process; its log's last line adds the child."""
    logs = run / "logs"
    (logs / "train_lora/world").mkdir(parents=True)
    (logs / "train_lora/world/a.log").write_text("training...\nsglora: ran in warm child 4242: 95.5 CPU-s, max RSS "
                                                 "812 MB (shared with the server)\n")
    (logs / "assemble.log").write_text("assembled in its own process\n")
    times = {t.rule: t for t in rule_times(run / "benchmarks", logs)}
    assert (times["train_lora"].cpu_s, times["train_lora"].max_rss_mb) == (120.0 + 95.5, 812.0)
    assert (times["assemble"].cpu_s, times["assemble"].max_rss_mb) == (3.0, 350.0)
    assert {t.rule: t.cpu_s for t in rule_times(run / "benchmarks")}["train_lora"] == 120.0  # no logs: as measured
