"""95% bootstrap intervals of a group's mean metric, and paired differences of two methods.

A group's mean metric (R@K or accuracy, in percent) is the mean over the group's tasks of
the mean over a method's runs of the mean over the task's test queries. A run is one
independently trained generator (e.g. one CVAE seed) with its samples; a run's value on a
query is the mean of its samples' hits there (hit: rank <= K, or a correct class). A method
without run labels is one run; a method with one LoRA is one run of one sample.

One bootstrap replicate resamples, with replacement:

- the tasks (T of T);
- the queries of each drawn task (Q_t of Q_t; a task drawn twice gets two query draws);
- the runs of a method that has several (R of R), one run draw for all tasks, since one
  run serves every task.

Task and query draws are shared by all methods of a group, so the difference of two
methods' replicates is a paired bootstrap of their difference. Run draws are each method's
own (method A's seed 0 has nothing to do with method B's). The interval is the percentile
interval of the replicates; the standard error is their standard deviation. Draws come from
a fixed seed, so intervals are reproducible byte for byte.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from .io import SGLoraError

N_BOOT = 2000  #: bootstrap replicates
LEVEL = 0.95  #: interval coverage
CHUNK = 250  #: replicates drawn at a time (bounds memory); part of the draws' definition


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval and standard error (percent points)."""

    estimate: float
    lo: float
    hi: float
    se: float

    def excludes_zero(self) -> bool:
        return bool(self.lo > 0 or self.hi < 0)

    def __str__(self) -> str:
        return f"{self.estimate:.2f} [{self.lo:.2f}, {self.hi:.2f}]"


def interval(estimate: float, replicates: np.ndarray, level: float = LEVEL) -> Interval:
    """Percentile interval and bootstrap standard deviation of ``replicates``."""
    tail = 50.0 * (1.0 - level)
    lo, hi = np.percentile(replicates, [tail, 100.0 - tail])
    se = float(np.std(replicates, ddof=1)) if len(replicates) > 1 else 0.0
    return Interval(float(estimate), float(lo), float(hi), se)


def query_hits(result: dict, metric: str) -> np.ndarray:
    """Samples x queries hits (0/1) of one ``<task>.json`` (:func:`sglora.evaluate.summarize`)
    for ``metric`` ("i2t_r1", "t2i_r5", ..., or "accuracy")."""
    if metric == "accuracy":
        if "correct" not in result:
            raise KeyError("correct")
        return np.asarray(result["correct"], dtype=np.float64)
    direction, k = metric.split("_r")
    return (np.asarray(result["ranks"][direction]) <= int(k)).astype(np.float64)


def run_hits(per_task: dict[str, dict], metric: str, method: str = "") -> list[np.ndarray]:
    """For each task (in ``per_task`` order): runs x queries, each run's mean hit over its samples.

    ``per_task``: task -> the method's ``<task>.json``. Runs are the distinct ``runs`` labels
    (sorted); every task must have the same ones."""
    out, labels = [], None
    for task, res in per_task.items():
        try:
            hits = query_hits(res, metric)
        except KeyError:
            raise SGLoraError(f"metrics of method {method!r}, task {task!r}: no per-query results for {metric!r} "
                              "(written by an older 'sglora evaluate'; rerun the evaluation)") from None
        runs = np.asarray(res.get("runs") or [0] * len(hits))
        if hits.ndim != 2 or len(runs) != len(hits):
            raise SGLoraError(f"metrics of method {method!r}, task {task!r}: {len(runs)} run labels for "
                              f"{hits.shape[0]} samples of per-query results; expected one per sample")
        mine = sorted(set(runs.tolist()))
        if labels is None:
            labels = mine
        elif mine != labels:
            raise SGLoraError(f"metrics of method {method!r}: task {task!r} has runs {mine}, another task "
                              f"{labels}; every task needs the same runs")
        out.append(np.stack([hits[runs == r].mean(0) for r in mine]))
    return out


def task_query_draws(n_queries: Sequence[int], n_boot: int = N_BOOT, seed: int = 0,
                     chunk: int = CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Chunks of ``(tasks, queries)``: ``tasks[b, j]`` is the task in slot j of replicate b;
    ``queries[b, j, i]`` (i < Q of that task; the rest is padding) the i-th query drawn for it.
    With unequal query counts, a query is ``floor(u * Q)`` for a uniform u in [0, 1)."""
    q = np.asarray(n_queries)
    qmax = int(q.max())
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, chunk):
        c = min(chunk, n_boot - start)
        tasks = rng.integers(0, len(q), size=(c, len(q)))
        if q.min() == qmax:
            queries = rng.integers(0, qmax, size=(c, len(q), qmax))
        else:
            queries = (rng.random((c, len(q), qmax)) * q[tasks][..., None]).astype(np.int64)
        yield tasks, queries


def run_draws(method: str, n_runs: int, n_boot: int = N_BOOT, seed: int = 0,
              chunk: int = CHUNK) -> Iterator[np.ndarray]:
    """Chunks of ``runs[b, i]``: the i-th run drawn in replicate b (the method's own stream)."""
    rng = np.random.default_rng([seed, zlib.crc32(method.encode())])
    for start in range(0, n_boot, chunk):
        c = min(chunk, n_boot - start)
        yield np.zeros((c, 1), np.int64) if n_runs == 1 else rng.integers(0, n_runs, size=(c, n_runs))


def estimate(hits: list[np.ndarray]) -> float:
    """The group mean (percent) of one method's :func:`run_hits`."""
    return float(100.0 * np.mean([h.mean() for h in hits]))


def bootstrap(hits: dict[str, list[np.ndarray]], n_boot: int = N_BOOT, seed: int = 0,
              chunk: int = CHUNK) -> dict[str, np.ndarray]:
    """Replicates (``n_boot``,) of each method's group mean (percent), on shared task and
    query draws. ``hits``: method -> :func:`run_hits` (same tasks and query counts for all)."""
    methods = list(hits)
    n_q = [h.shape[1] for h in hits[methods[0]]]
    for m in methods:
        if [h.shape[1] for h in hits[m]] != n_q:
            raise SGLoraError(f"bootstrap: method {m!r} has queries per task {[h.shape[1] for h in hits[m]]}, "
                              f"method {methods[0]!r} {n_q}; a paired comparison needs the same test queries")
    q, qmax = np.asarray(n_q), max(n_q)
    flat = {}  # method -> per run: the hit of (task, query) at task * qmax + query; then one 0
    for m in methods:
        arr = np.zeros((hits[m][0].shape[0], len(n_q) * qmax + 1))
        for t, h in enumerate(hits[m]):
            arr[:, t * qmax : t * qmax + h.shape[1]] = h
        flat[m] = arr
    runs = {m: run_draws(m, len(flat[m]), n_boot, seed, chunk) for m in methods}
    out = {m: np.empty(n_boot) for m in methods}
    start = 0
    for tasks, queries in task_query_draws(n_q, n_boot, seed, chunk):
        c = len(tasks)
        n_drawn = q[tasks]  # c x T: queries of the task in each slot
        index = tasks[..., None] * qmax + queries
        if q.min() < qmax:  # padding draws point at the 0 after the last task
            index = np.where(np.arange(qmax) < n_drawn[..., None], index, len(q) * qmax)
        for m in methods:
            per_run = np.stack([f.take(index).sum(-1) for f in flat[m]], -1)  # c x T x runs: sums over queries
            n_runs, drawn = per_run.shape[-1], next(runs[m])
            w = (drawn[..., None] == np.arange(n_runs)).sum(1) / n_runs  # c x runs: share of each run
            out[m][start : start + c] = 100.0 * (np.einsum("btr,br->bt", per_run, w) / n_drawn).mean(1)
        start += c
    return out


@dataclass
class GroupStats:
    """One metric of a group: each method's estimate and bootstrap replicates (shared draws)."""

    metric: str
    estimates: dict[str, float]
    replicates: dict[str, np.ndarray]

    def interval(self, method: str) -> Interval:
        return interval(self.estimates[method], self.replicates[method])

    def difference(self, a: str, b: str) -> Interval:
        """``a`` minus ``b``, paired: both on the same task and query draws."""
        return interval(self.estimates[a] - self.estimates[b], self.replicates[a] - self.replicates[b])


def group_stats(results: dict[str, dict[str, dict]], metric: str, n_boot: int = N_BOOT, seed: int = 0) -> GroupStats:
    """``results``: method -> task -> ``<task>.json`` (``sglora.tables.load_group``)."""
    hits = {m: run_hits(per_task, metric, m) for m, per_task in results.items()}
    return GroupStats(metric, {m: estimate(h) for m, h in hits.items()}, bootstrap(hits, n_boot, seed))


@dataclass(frozen=True)
class Power:
    """How a method's task means vary (percent points squared)."""

    tasks: int  #: tasks in the group
    between: float  #: variance of the task means beyond what their queries explain (>= 0)
    within: float  #: the mean over tasks of a task mean's variance from its queries

    @property
    def between_share(self) -> float:
        """The part of the task means' variance that more test queries per task cannot remove."""
        total = self.between + self.within
        return self.between / total if total > 0 else 0.0


def tasks_for(se: float, tasks: int, target: float) -> int:
    """Tasks a group needs for a standard error <= ``target``, from the ``se`` it has with
    ``tasks`` tasks (a mean over tasks: the squared SE falls as 1 / tasks)."""
    return max(1, int(np.ceil(tasks * (se / target) ** 2)))


def power(hits: list[np.ndarray]) -> Power:
    """Method-of-moments split of one method's :func:`run_hits` (percent): the variance of a
    task mean from its own test queries (``var(query hits) / Q``, queries averaged over runs)
    and the variance between tasks beyond it (``var(task means) - mean within``, floored at
    0)."""
    means, within = [], []
    for h in hits:
        per_query = 100.0 * np.asarray(h, dtype=np.float64).mean(0)
        means.append(per_query.mean())
        within.append(per_query.var(ddof=1) / len(per_query) if len(per_query) > 1 else 0.0)
    total = float(np.var(means, ddof=1)) if len(means) > 1 else 0.0
    w = float(np.mean(within)) if within else 0.0
    return Power(len(means), max(total - w, 0.0), w)


def n_runs(per_task: dict[str, dict]) -> int:
    """Distinct run labels of a method's results (1 when none are recorded)."""
    return len({r for res in per_task.values() for r in (res.get("runs") or [0])})


__all__ = ["Interval", "interval", "query_hits", "run_hits", "task_query_draws", "run_draws", "estimate",
           "bootstrap", "GroupStats", "group_stats", "n_runs", "N_BOOT", "LEVEL"]
