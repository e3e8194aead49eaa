"""95% bootstrap intervals of a group's mean metric, and paired differences of two methods.

A group's mean metric (R@K or accuracy, in percent) is the mean over the group's tasks of
the mean over a method's runs of the mean over the task's test queries. A run is one
independently trained generator (e.g. one CVAE seed) with its samples; a run's value on a
query is the mean of its samples' hits there (hit: rank <= K, or a correct class). A method
without run labels is one run; a method with one LoRA is one run of one sample.

Tasks that share a family (in the embedded world: the family word; its members share their
experts and the family's looks) move together, so the unit that varies independently is the
family, not the task. One bootstrap replicate resamples, with replacement:

- the families (F of F);
- the tasks of each drawn family (n_f of n_f; a family drawn twice gets two task draws);
- the queries of each drawn task (Q_t of Q_t; a task drawn twice gets two query draws);
- the runs of a method that has several (R of R), one run draw for all tasks, since one
  run serves every task.

A replicate's value is the mean over its drawn task slots. Without families (``families``
None, or every task a family of its own) the first two stages are one: the tasks (T of T),
drawn exactly as the task-level bootstrap draws them. Which tasks form a family is the
caller's (``sglora.analyses.tables.group_families``).

Family, task and query draws are shared by all methods of a group, so the difference of two
methods' replicates is a paired bootstrap of their difference. Run draws are each method's
own (method A's seed 0 has nothing to do with method B's). The interval is the percentile
interval of the replicates; the standard error is their standard deviation. Draws come from
a fixed seed, so intervals are reproducible byte for byte.

Few units (6 families in the embedded default's groups) make the first stage too narrow: its
variance of a mean of U unit means is the plug-in one, (U - 1) / U of the unbiased s^2 / U.
:func:`bootstrap` therefore scales each replicate's deviation from the replicates' mean by
:func:`widening` (sqrt(U / (U - 1))), once, so every interval, paired difference and standard
error built from the replicates carries it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Iterator, Sequence

import numpy as np

from ..io import SGLoraError

N_BOOT = 2000  #: bootstrap replicates
LEVEL = 0.95  #: interval coverage
CHUNK = 250  #: replicates drawn at a time (bounds memory); part of the draws' definition
#: A true difference of DETECTABLE standard errors is detected (a two-sided test at the 5%
#: level rejects "no difference") with 80% power: z(0.975) + z(0.80) = 1.96 + 0.84 = 2.80.
DETECTABLE = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.80)


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval and standard error (percent points)."""

    estimate: float
    lo: float
    hi: float
    se: float

    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely above or below zero."""
        return bool(self.lo > 0 or self.hi < 0)

    @property
    def detectable(self) -> float:
        """The minimum detectable difference at 80% power and the 5% level from this SE."""
        return DETECTABLE * self.se

    def __str__(self) -> str:
        return f"{self.estimate:.2f} [{self.lo:.2f}, {self.hi:.2f}]"


def interval(estimate: float, replicates: np.ndarray, level: float = LEVEL) -> Interval:
    """Percentile interval and bootstrap standard deviation of ``replicates``."""
    tail = 50.0 * (1.0 - level)
    lo, hi = np.percentile(replicates, [tail, 100.0 - tail])
    se = float(np.std(replicates, ddof=1)) if len(replicates) > 1 else 0.0
    return Interval(float(estimate), float(lo), float(hi), se)


def query_hits(result: dict, metric: str) -> np.ndarray:
    """Samples x queries hits (0/1) of one ``<task>.json`` (:func:`sglora.evaluation.scoring.summarize`)
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


def clusters(families: Sequence | None, n_tasks: int) -> list[np.ndarray] | None:
    """The task indices of each family (families in order of first appearance) from
    ``families[i]``, the family of task i; None when there are none or every task is alone."""
    if families is None:
        return None
    if len(families) != n_tasks:
        raise SGLoraError(f"bootstrap: {len(families)} family labels for {n_tasks} tasks; expected one per task")
    members: dict = {}
    for i, f in enumerate(families):
        members.setdefault(f, []).append(i)
    return None if len(members) == n_tasks else [np.asarray(m) for m in members.values()]


def n_units(families: Sequence | None, n_tasks: int) -> int:
    """The independent units a replicate draws first: the families, or the tasks (no families,
    or every task alone)."""
    members = clusters(families, n_tasks)
    return n_tasks if members is None else len(members)


def widening(units: int) -> float:
    """The factor :func:`bootstrap` scales each replicate's deviation from the replicates' mean
    by: sqrt(U / (U - 1)) for U >= 2 units drawn first, 1 for one (nothing is drawn then).

    The first stage draws U of U units, so it gives the mean of U unit means the plug-in
    variance (1/U of the squared deviations, over U): (U - 1) / U of the unbiased s^2 / U, an
    interval 9% too short at 6 units. The factor makes that part unbiased (a one-stage
    bootstrap's standard error becomes s / sqrt(U), as with ddof=1). It adds no t(U - 1) tail
    factor: the inner stages (tasks of a drawn family, queries of a drawn task) add again the
    within-unit variance the unit means already carry, which widens the interval by about as
    much wherever test queries are a sizeable part of a task mean's variance (the tables' power
    note gives that share). Simulated (tests/test_stats.py: 20 queries per task, about 30%
    of a task mean's variance from its queries), the intervals cover 95 +- 2.5% at 6 families
    x 1 or 2 tasks and at 12 x 2; with the t factor too they cover 97-98%. Where task means
    carry little query noise (100 queries per task: 8% of their variance), at 6 families they
    cover about 90%, and the t factor would be needed."""
    return float(np.sqrt(units / (units - 1))) if units > 1 else 1.0


def resampling(families: Sequence | None, n_tasks: int) -> str:
    """What a replicate resamples, for a table's caption."""
    members = clusters(families, n_tasks)
    if members is not None:
        return f"the {len(members)} families, the tasks of each drawn family, test queries and runs"
    alone = " (each its own family)" if families is not None else ""
    return f"the {n_tasks} tasks{alone}, test queries and runs"


def _family_task_draws(rng: np.random.Generator, members: list[np.ndarray], c: int):
    """``tasks`` (c x F * n_max) of ``c`` replicates: F families drawn, then n_f tasks of each
    (slots n_f..n_max of a family are padding); ``valid`` marks the real slots (None: all)."""
    sizes = np.array([len(m) for m in members])
    n_max = int(sizes.max())
    table = np.zeros((len(members), n_max), np.int64)
    for f, m in enumerate(members):
        table[f, : len(m)] = m
    fams = rng.integers(0, len(members), size=(c, len(members)))
    if sizes.min() == n_max:
        pos, valid = rng.integers(0, n_max, size=(c, len(members), n_max)), None
    else:
        n = sizes[fams][..., None]
        pos = (rng.random((c, len(members), n_max)) * n).astype(np.int64)
        valid = (np.arange(n_max) < n).reshape(c, -1)
    return table[fams[..., None], pos].reshape(c, -1), valid


def task_query_draws(n_queries: Sequence[int], n_boot: int = N_BOOT, seed: int = 0, chunk: int = CHUNK,
                     families: Sequence | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Chunks of ``(tasks, queries, valid)``: ``tasks[b, j]`` is the task in slot j of
    replicate b; ``queries[b, j, i]`` (i < Q of that task; the rest is padding) the i-th query
    drawn for it; ``valid[b, j]`` whether slot j counts (None: every slot does). Without
    families: T slots, the tasks drawn T of T. With ``families`` (the family of each task):
    the families drawn F of F, then each drawn family's n_f tasks n_f of n_f, in slots padded
    to the largest family. With unequal counts, a draw among n is ``floor(u * n)`` for a
    uniform u in [0, 1)."""
    q = np.asarray(n_queries)
    qmax = int(q.max())
    members = clusters(families, len(q))
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, chunk):
        c = min(chunk, n_boot - start)
        if members is None:
            tasks, valid = rng.integers(0, len(q), size=(c, len(q))), None
        else:
            tasks, valid = _family_task_draws(rng, members, c)
        if q.min() == qmax:
            queries = rng.integers(0, qmax, size=(c, tasks.shape[1], qmax))
        else:
            queries = (rng.random((c, tasks.shape[1], qmax)) * q[tasks][..., None]).astype(np.int64)
        yield tasks, queries, valid


def run_draws(method: str, n_runs: int, n_boot: int = N_BOOT, seed: int = 0,
              chunk: int = CHUNK, stream: int = 0) -> Iterator[np.ndarray]:
    """Chunks of ``runs[b, i]``: the i-th run drawn in replicate b (the method's own stream;
    ``stream`` > 0: another one, for the runs of another training replicate)."""
    rng = np.random.default_rng([seed, zlib.crc32(method.encode())] + ([stream] if stream else []))
    for start in range(0, n_boot, chunk):
        c = min(chunk, n_boot - start)
        yield np.zeros((c, 1), np.int64) if n_runs == 1 else rng.integers(0, n_runs, size=(c, n_runs))


def estimate(hits: list[np.ndarray]) -> float:
    """The group mean (percent) of one method's :func:`run_hits`."""
    return float(100.0 * np.mean([h.mean() for h in hits]))


def bootstrap(hits: dict[str, list[np.ndarray]], n_boot: int = N_BOOT, seed: int = 0, chunk: int = CHUNK,
              families: Sequence | None = None, stream: int = 0) -> dict[str, np.ndarray]:
    """Replicates (``n_boot``,) of each method's group mean (percent), on shared family, task
    and query draws, each one's deviation from their mean scaled by :func:`widening` of the
    units drawn first (one factor for all methods, so paired differences scale alike).
    ``hits``: method -> :func:`run_hits` (same tasks and query counts for all); ``families``:
    the family of each task (None: tasks drawn as independent units); ``stream``: the runs'
    draws (:func:`run_draws`; the family, task and query draws depend on ``seed`` only)."""
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
    runs = {m: run_draws(m, len(flat[m]), n_boot, seed, chunk, stream) for m in methods}
    out = {m: np.empty(n_boot) for m in methods}
    start = 0
    for tasks, queries, valid in task_query_draws(n_q, n_boot, seed, chunk, families):
        c = len(tasks)
        n_drawn = q[tasks]  # c x slots: queries of the task in each slot
        index = tasks[..., None] * qmax + queries
        if q.min() < qmax:  # padding draws point at the 0 after the last task
            index = np.where(np.arange(qmax) < n_drawn[..., None], index, len(q) * qmax)
        for m in methods:
            per_run = np.stack([f.take(index).sum(-1) for f in flat[m]], -1)  # c x T x runs: sums over queries
            n_runs, drawn = per_run.shape[-1], next(runs[m])
            w = (drawn[..., None] == np.arange(n_runs)).sum(1) / n_runs  # c x runs: share of each run
            slot = np.einsum("btr,br->bt", per_run, w) / n_drawn  # c x slots: each slot's task mean
            mean = slot.mean(1) if valid is None else (slot * valid).sum(1) / valid.sum(1)
            out[m][start : start + c] = 100.0 * mean
        start += c
    scale = widening(n_units(families, len(n_q)))
    if scale != 1.0:
        for m in methods:
            centre = out[m].mean()
            out[m] = centre + scale * (out[m] - centre)
    return out


def pooled_bootstrap(hits: list[dict[str, list[np.ndarray]]], n_boot: int = N_BOOT, seed: int = 0,
                     chunk: int = CHUNK, families: Sequence | None = None) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Replicates of each method's group mean pooled over training replicates (``hits``: one
    :func:`run_hits` map per training replicate, the same tasks and test queries in each).

    A bootstrap replicate draws the training replicates first (R of R), then, shared by all of
    them and by every method, the families, tasks and test queries (the replicates are the
    same tasks trained again: crossed, not nested), then each method's runs within each
    training replicate (its own stream). Its value is the mean over the drawn training
    replicates. The part that the first draw adds (the deviation from the mean over all R at
    the same inner draws) is widened by :func:`widening` of R, as the families are. With R = 2
    that part rests on one difference between two trainings: an interval that holds over
    two replicates still says little about a third.

    Returns the pooled replicates and each training replicate's own (:func:`bootstrap`, for
    its own verdicts)."""
    own = [bootstrap(h, n_boot, seed, chunk, families, stream=k) for k, h in enumerate(hits)]
    if len(own) == 1:
        return own[0], own
    methods = list(hits[0])
    for k, h in enumerate(hits[1:], 1):
        if list(h) != methods:
            raise SGLoraError(f"pooled bootstrap: training replicate {k} has methods {list(h)}, replicate 0 {methods}")
    n = len(own)
    drawn = np.random.default_rng([seed, n, 0x5EED]).integers(0, n, size=(n_boot, n))
    rows = np.arange(n_boot)[:, None]
    out = {}
    for m in methods:
        stacked = np.stack([o[m] for o in own], 1)  # n_boot x R
        inner = stacked.mean(1)
        outer = stacked[rows, drawn].mean(1) - inner
        out[m] = inner + widening(n) * outer
    return out, own


@dataclass
class GroupStats:
    """One metric of a group: each method's estimate and bootstrap replicates (shared draws)."""

    metric: str
    estimates: dict[str, float]
    replicates: dict[str, np.ndarray]
    tasks: int  #: tasks in the group
    families: list | None = None  #: the family of each task (None: tasks resampled as independent units)
    #: pooled over training replicates (:func:`pooled_group_stats`): each training replicate's own stats
    trainings: list[GroupStats] = field(default_factory=list)

    @property
    def resampled(self) -> str:
        """What each replicate resamples (:func:`resampling`)."""
        inner = resampling(self.families, self.tasks)
        if not self.trainings:
            return inner
        return f"the {len(self.trainings)} training replicates, then, shared by them, {inner}"

    def interval(self, method: str) -> Interval:
        """The 95% interval of a method's group mean."""
        return interval(self.estimates[method], self.replicates[method])

    def difference(self, a: str, b: str) -> Interval:
        """``a`` minus ``b``, paired: both on the same task and query draws."""
        return interval(self.estimates[a] - self.estimates[b], self.replicates[a] - self.replicates[b])

    def training_share(self, a: str, b: str | None = None) -> float:
        """The share of the bootstrap variance of ``a``'s mean (or of ``a`` minus ``b``) that
        the draw of training replicates adds (:func:`pooled_bootstrap`'s widened outer part; 0
        without replicates). The rest comes from the families, tasks, test queries and runs,
        averaged over the replicates: the part more families would shrink; more replicates
        shrink this one (a generator's runs, drawn within each replicate, count here too)."""
        if len(self.trainings) < 2:
            return 0.0

        def value(reps: dict[str, np.ndarray]) -> np.ndarray:
            return reps[a] - reps[b] if b is not None else reps[a]

        total = value(self.replicates)
        inner = np.mean([value(t.replicates) for t in self.trainings], 0)
        var = float(np.var(total))
        return float(np.clip(np.var(total - inner) / var, 0.0, 1.0)) if var > 0 else 0.0


def group_stats(results: dict[str, dict[str, dict]], metric: str, n_boot: int = N_BOOT, seed: int = 0,
                families: dict[str, str] | None = None) -> GroupStats:
    """``results``: method -> task -> ``<task>.json`` (``sglora.analyses.tables.load_group``);
    ``families``: task -> family (``sglora.analyses.tables.group_families``; None: the task bootstrap)."""
    hits = {m: run_hits(per_task, metric, m) for m, per_task in results.items()}
    tasks = list(next(iter(results.values())))
    fams = family_labels(families, tasks)
    return GroupStats(metric, {m: estimate(h) for m, h in hits.items()},
                      bootstrap(hits, n_boot, seed, families=fams), len(tasks), fams)


def pooled_group_stats(results: list[dict[str, dict[str, dict]]], metric: str, n_boot: int = N_BOOT, seed: int = 0,
                       families: dict[str, str] | None = None) -> GroupStats:
    """:func:`group_stats` pooled over training replicates (``results``: one ``method -> task ->
    <task>.json`` map per replicate, the same methods and tasks): estimates are the means over
    the replicates, intervals from :func:`pooled_bootstrap`; ``trainings`` holds each
    replicate's own stats (its verdicts)."""
    hits = [{m: run_hits(per_task, metric, m) for m, per_task in res.items()} for res in results]
    tasks = list(next(iter(results[0].values())))
    for k, res in enumerate(results[1:], 1):
        theirs = list(next(iter(res.values())))
        if theirs != tasks:
            raise SGLoraError(f"pooled tables: training replicate {k} has tasks {theirs}, replicate 0 {tasks}")
    fams = family_labels(families, tasks)
    pooled, own = pooled_bootstrap(hits, n_boot, seed, families=fams)
    per = [GroupStats(metric, {m: estimate(x) for m, x in h.items()}, o, len(tasks), fams) for h, o in zip(hits, own)]
    means = {m: float(np.mean([p.estimates[m] for p in per])) for m in per[0].estimates}
    return GroupStats(metric, means, pooled, len(tasks), fams, per if len(per) > 1 else [])


def family_labels(families: dict[str, str] | None, tasks: list[str]) -> list[str] | None:
    """The family of each of ``tasks`` from ``families`` (task -> family); an error names the
    tasks it lacks."""
    if families is None:
        return None
    missing = [t for t in tasks if t not in families]
    if missing:
        raise SGLoraError(f"bootstrap: no family given for tasks {missing}; expected one for every task of the group")
    return [families[t] for t in tasks]


VERDICTS = ("win", "tie", "loss")  #: a per-task verdict: interval wholly above 0, including 0, wholly below


def task_differences(a: dict[str, dict], b: dict[str, dict], metric: str, n_boot: int = N_BOOT, seed: int = 0,
                     names: tuple[str, str] = ("a", "b")) -> dict[str, Interval]:
    """Per task: method ``a`` minus method ``b`` (task -> ``<task>.json`` each, the same tasks)
    with the paired interval of that task alone: its test queries (the same draws for both)
    and each method's runs (its own draws) resampled, as :func:`bootstrap` does for a group
    of one task (one unit: nothing widened). ``names``: the methods' ids (their run streams)."""
    if list(a) != list(b):
        raise SGLoraError(f"per-task differences: {names[0]} has tasks {list(a)}, {names[1]} {list(b)}")
    out = {}
    for t in a:
        hits = {names[0]: run_hits({t: a[t]}, metric, names[0]), names[1]: run_hits({t: b[t]}, metric, names[1])}
        reps = bootstrap(hits, n_boot, seed)
        out[t] = interval(estimate(hits[names[0]]) - estimate(hits[names[1]]), reps[names[0]] - reps[names[1]])
    return out


def verdict(difference: Interval) -> str:
    """"win" where the interval lies wholly above 0, "loss" wholly below, else "tie"."""
    return "win" if difference.lo > 0 else "loss" if difference.hi < 0 else "tie"


@dataclass(frozen=True)
class Power:
    """How a method's unit means vary (percent points squared). A unit is what the bootstrap
    draws first: a family (its mean: the mean of its tasks' means), or a task without families."""

    units: int  #: independent units in the group (families, or tasks)
    between: float  #: variance of the unit means beyond what their queries explain (>= 0)
    within: float  #: the mean over units of a unit mean's variance from its queries
    unit: str = "task"  #: "family" or "task"

    @property
    def between_share(self) -> float:
        """The part of the unit means' variance that more test queries per task cannot remove."""
        total = self.between + self.within
        return self.between / total if total > 0 else 0.0


def units_for(se: float, units: int, target: float, fixed: float = 0.0) -> int | None:
    """Units (families under the family bootstrap, else tasks) a group needs for a standard
    error <= ``target``, from the ``se`` it has with ``units`` of them, each new unit like the
    present ones (a mean over independent units: the squared SE falls as 1 / units).
    ``fixed``: the share of ``se ** 2`` that more units leave as it is (the training
    replicates' part, :meth:`GroupStats.training_share`); None where that part alone exceeds
    the target (no number of units would do)."""
    free, kept = (1.0 - fixed) * se**2, fixed * se**2
    if kept >= target**2:
        return None
    return max(1, int(np.ceil(units * free / (target**2 - kept))))


def power(hits: list[np.ndarray], families: Sequence | None = None) -> Power:
    """Method-of-moments split of one method's :func:`run_hits` (percent): the variance of a
    unit mean from its own test queries (a task's: ``var(query hits) / Q``, queries averaged
    over runs; a family's: the sum of its n_f tasks' over n_f^2) and the variance between
    units beyond it (``var(unit means) - mean within``, floored at 0). ``families``: the
    family of each task (None, or all alone: every task its own unit)."""
    means, within = [], []
    for h in hits:
        per_query = 100.0 * np.asarray(h, dtype=np.float64).mean(0)
        means.append(per_query.mean())
        within.append(per_query.var(ddof=1) / len(per_query) if len(per_query) > 1 else 0.0)
    members = clusters(families, len(hits))
    unit = "task" if members is None else "family"
    if members is not None:
        means = [np.mean([means[i] for i in m]) for m in members]
        within = [np.sum([within[i] for i in m]) / len(m) ** 2 for m in members]
    total = float(np.var(means, ddof=1)) if len(means) > 1 else 0.0
    w = float(np.mean(within)) if within else 0.0
    return Power(len(means), max(total - w, 0.0), w, unit)


def n_runs(per_task: dict[str, dict]) -> int:
    """Distinct run labels of a method's results (1 when none are recorded)."""
    return len({r for res in per_task.values() for r in (res.get("runs") or [0])})


__all__ = ["Interval", "interval", "query_hits", "run_hits", "clusters", "n_units", "widening", "resampling",
           "task_query_draws", "run_draws", "estimate", "bootstrap", "GroupStats", "group_stats", "family_labels",
           "Power", "power", "units_for", "n_runs", "task_differences", "pooled_bootstrap", "pooled_group_stats",
           "verdict", "VERDICTS", "N_BOOT", "LEVEL", "DETECTABLE"]
