"""The built-in model's quality targets, and what an ablation table says of them.

`check_targets` reads the "all mechanisms" row (and the decomposition row) of an
ablation (`evaluate.ablation`) against `TARGETS`; `mechanism_gains` finds, for each
single-mechanism row and the all-mechanisms row, the measures on which it beats
independent layers beyond both 95% intervals, and the same for CACA added to LSSA
against LSSA alone. `format_targets` turns both into markdown. Pure functions on
`AblationRow`s: no model, no sampling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from dreamlayer_jax.eval.evaluate import (
    ABLATION_SETTINGS,
    DECOMPOSITION_ROW,
    MEASURES,
    AblationRow,
    cell,
)

INDEPENDENT_ROW = ABLATION_SETTINGS[0][0]
ALL_ROW = ABLATION_SETTINGS[-1][0]
MECHANISM_ROWS = tuple(name for name, switches in ABLATION_SETTINGS
                       if sum(switches.values()) == 1)
# each compared row -> the row it must beat: a mechanism alone and all of them against
# independent layers, and CACA on top of LSSA against LSSA alone (the paper variant's
# context maps act only through LSSA's blend)
BASELINES: dict[str, str] = {**{name: INDEPENDENT_ROW for name in (*MECHANISM_ROWS, ALL_ROW)},
                             "+LSSA+CACA": "+LSSA"}
# measures whose best value is 1 (a ratio to the ground truth's), or the lowest
RATIO_MEASURES = ("noise_global", "noise_background", "noise_foreground")
LOWER_IS_BETTER = ("fid_composite", "fid_background", "fid_foreground")


@dataclass(frozen=True)
class Target:
    """`measure` of `row` should be `>=` (or `<=`) `goal`; `box_only`: the box variant's."""

    measure: str
    op: str
    goal: float
    row: str = ALL_ROW
    box_only: bool = False

    def met_by(self, value: float) -> bool:
        return value >= self.goal if self.op == ">=" else value <= self.goal


TARGETS: tuple[Target, ...] = (
    Target("colour", ">=", 0.90),
    Target("shape", ">=", 0.80),
    Target("coherence_psnr", ">=", 25.0),
    Target("noise_global", "<=", 1.5),
    Target("noise_background", "<=", 1.5),
    Target("noise_foreground", "<=", 1.5),
    Target("box_iou", ">=", 0.80, box_only=True),
    Target("background_psnr", ">=", 22.0, row=DECOMPOSITION_ROW),
    Target("alpha_iou", ">=", 0.60, row=DECOMPOSITION_ROW),
)


@dataclass(frozen=True)
class TargetCheck:
    """One target against its measured `(mean, half)`; `value` None when not measured."""

    target: Target
    value: tuple[float, float] | None

    @property
    def met(self) -> bool | None:
        return None if self.value is None else self.target.met_by(self.value[0])

    @property
    def gap(self) -> float | None:
        """How far the mean is from the goal, in the measure's units (0 when met)."""
        if self.value is None:
            return None
        return 0.0 if self.met else abs(self.value[0] - self.target.goal)


def check_targets(rows: Sequence[AblationRow], boxes: bool) -> list[TargetCheck]:
    """Each applicable target (box-only ones only with `boxes`) against `rows`."""
    by_name = {row.name: row for row in rows}
    out = []
    for target in TARGETS:
        if target.box_only and not boxes:
            continue
        row = by_name.get(target.row)
        value = row.measures.get(target.measure) if row is not None else None
        out.append(TargetCheck(target, value))
    return out


def better_beyond_interval(measure: str, a: tuple[float, float], b: tuple[float, float]
                           ) -> bool:
    """Is `a` better than `b` on `measure` with their 95% intervals apart?"""
    (ma, ha), (mb, hb) = a, b
    if not (abs(ma - mb) > ha + hb):
        return False
    if measure in RATIO_MEASURES:  # closer to the truth's 1, as a factor either way
        return ma > 0 and mb > 0 and abs(math.log(ma)) < abs(math.log(mb))
    if measure in LOWER_IS_BETTER:
        return ma < mb
    return ma > mb


def mechanism_gains(rows: Sequence[AblationRow]) -> dict[str, list[str]]:
    """`{compared row: [measures it beats its baseline row on, beyond the intervals]}`
    (`BASELINES`; a pair with a row missing makes no claim)."""
    by_name = {row.name: row for row in rows}
    out = {}
    for name, baseline in BASELINES.items():
        row, base = by_name.get(name), by_name.get(baseline)
        if row is None or base is None:
            continue
        out[name] = [m for m in MEASURES if m in row.measures and m in base.measures
                     and better_beyond_interval(m, row.measures[m], base.measures[m])]
    return out


def format_targets(checks: Sequence[TargetCheck], gains: dict[str, list[str]]) -> str:
    """Markdown: a table of the targets (goal, measured, met or by how much missed), then
    a line per mechanism with the measures it improves beyond the intervals."""
    lines = ["| target | row | goal | measured | met |", "|---|---|---|---|---|"]
    for check in checks:
        t = check.target
        label, digits = MEASURES[t.measure]
        measured = "not measured" if check.value is None else cell(check.value, digits)
        miss = "short" if t.op == ">=" else "over"
        verdict = ("" if check.met is None else "yes" if check.met
                   else f"no, {check.gap:.{digits}f} {miss}")
        lines.append(f"| {label} | {t.row} | {t.op} {t.goal:g} | {measured} | {verdict} |")
    lines.append("")
    for name, measures in gains.items():
        better = ", ".join(MEASURES[m][0] for m in measures) or "none"
        baseline = "independent layers" if BASELINES[name] == INDEPENDENT_ROW else BASELINES[name]
        lines.append(f"- {name} beats {baseline} beyond the intervals on: {better}")
    return "\n".join(lines)
