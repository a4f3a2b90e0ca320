"""What a run's own rows show about over-optimisation, and the functional forms it follows.

Gao et al. 2022 ("Scaling laws for reward model overoptimization", eq. 1–2): with d = √KL(π ‖ π_init),
the gold reward gained over the initial policy follows

    best-of-n:  R(d) = d (α − β d)           peaks at d* = α / (2β)
    RL:         R(d) = d (α − β log d)       peaks at d* = exp(α/β − 1)

Both are linear in (α, β), so they are fitted by least squares without intercept (R(0) = 0 by
construction); R² is measured around the mean of the gains. `overoptimisation` reads one online
RL stage (rows with kl/mean, gold/mean, reward/mean, and reward/ensemble_std for an ensemble):
the gold peak of the smoothed curve, how far gold fell after it while the proxy went on, and when
the ensemble's disagreement started to grow. The report's Findings section draws from these;
benchmarks/overopt_law.py fits the laws at full size (docs/FINDINGS.md).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class LawFit:
    form: str  # "bon" or "rl"
    alpha: float
    beta: float
    r2: float
    points: int

    def gain(self, d: float) -> float:
        if self.form == "bon":
            return d * (self.alpha - self.beta * d)
        return 0.0 if d <= 0 else d * (self.alpha - self.beta * math.log(d))

    @property
    def peak_kl(self) -> float | None:
        """KL (nats) at the fitted maximum; None when the fit has no maximum (β <= 0)."""
        if self.beta <= 0:
            return None
        d = self.alpha / (2 * self.beta) if self.form == "bon" else math.exp(self.alpha / self.beta - 1)
        return d * d


def fit_law(d: Sequence[float], gain: Sequence[float], form: str) -> LawFit:
    """Least-squares α, β of gain = d(α − βd) (form "bon") or d(α − β log d) (form "rl") over the
    points with d > 0. Needs at least 3 such points and two independent features."""
    pts = [(x, y) for x, y in zip(d, gain, strict=True) if x > 0]
    if len(pts) < 3 or form not in ("bon", "rl"):
        raise ValueError(f"fit_law needs form 'bon' or 'rl' and 3 points with d > 0, got {form!r}, {len(pts)}")
    # gain = α u − β v with u = d, v = d² (bon) or d log d (rl): normal equations of [u, −v].
    u = [x for x, _ in pts]
    v = [x * x if form == "bon" else x * math.log(x) for x, _ in pts]
    y = [g for _, g in pts]
    suu, svv, suv = sum(a * a for a in u), sum(b * b for b in v), sum(a * b for a, b in zip(u, v, strict=True))
    suy, svy = sum(a * c for a, c in zip(u, y, strict=True)), sum(b * c for b, c in zip(v, y, strict=True))
    det = suu * svv - suv * suv
    if abs(det) <= 1e-12 * max(suu * svv, 1e-300):
        raise ValueError("fit_law: the points do not determine both coefficients (all d equal?)")
    alpha = (suy * svv - svy * suv) / det
    beta = (suy * suv - svy * suu) / det  # the coefficient of −v
    fit = LawFit(form, alpha, beta, 0.0, len(pts))
    mean = sum(y) / len(y)
    ss_tot = sum((c - mean) ** 2 for c in y)
    ss_res = sum((c - fit.gain(x)) ** 2 for x, c in pts)
    return LawFit(form, alpha, beta, 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"), len(pts))


@dataclass(frozen=True)
class OverOpt:
    """One online RL stage's gold curve, smoothed over `window` steps (trailing means)."""

    window: int
    steps: int
    gold_start: float  # mean of the first window
    gold_peak: float
    peak_step: int
    peak_kl: float  # smoothed kl/mean at the peak
    gold_end: float  # mean of the last window
    kl_end: float
    proxy_peak: float | None  # smoothed reward/mean at the gold peak, and at the end
    proxy_end: float | None
    fall_se: float  # standard error of (peak − end), from the per-step spread
    points: tuple[tuple[float, float], ...]  # smoothed (d = √KL, gold − gold_start), full windows
    fit: LawFit | None  # the RL form fitted to `points`
    disagreement_start: float | None  # reward/ensemble_std, first window
    disagreement_peak: float | None  # at the gold peak
    disagreement_end: float | None
    disagreement_rise_step: int | None  # first step whose smoothed std is >= 1.25 x the first window's

    @property
    def fall(self) -> float:
        return self.gold_peak - self.gold_end

    @property
    def fell(self) -> bool:
        """Gold ended clearly below its peak: the fall is over 3 standard errors (and the peak is
        not the last window). The peak is the largest of many noisy window means, so on a flat
        curve it sits ~1.6 window-SEs (for ~12 windows) above the truth; 3 SEs of the difference
        (4.2 window-SEs) leaves a false alarm on a plateau well under 1%."""
        return self.peak_step < self.steps and self.fall > 3 * self.fall_se

    @property
    def proxy_rose_after_peak(self) -> bool | None:
        if self.proxy_peak is None or self.proxy_end is None:
            return None
        return self.proxy_end > self.proxy_peak


    def statements(self) -> list[str]:
        """The findings in words, each backed by the numbers above (the report's Findings section)."""
        out = []
        at_peak = f"{self.gold_peak:.3g} at step {self.peak_step} (KL {self.peak_kl:.3g} nats)"
        if self.fell:
            proxy = (f", while the proxy reward kept rising ({self.proxy_peak:.3g} → {self.proxy_end:.3g})"
                     if self.proxy_rose_after_peak else "")
            out.append(f"Over-optimisation: gold peaked at {at_peak} and ended at {self.gold_end:.3g} (KL {self.kl_end:.3g}): "
                       f"a fall of {self.fall:.3g}, {self.fall / self.fall_se:.1f} standard errors{proxy}. Past the peak the "
                       "policy was exploiting the reward's errors (Gao et al. 2022).")
        else:
            out.append(f"Gold did not fall clearly after its best point: peak {at_peak}, end {self.gold_end:.3g} "
                       f"(KL {self.kl_end:.3g}); the difference, {self.fall:.3g}, is within 3 standard errors "
                       f"({self.fall_se:.3g} each).")
        if self.fit is not None:
            peak = self.fit.peak_kl
            where = (f"its fitted peak is at KL {peak:.3g} nats (observed: {self.peak_kl:.3g})" if peak is not None
                     else "the fit has no peak (β ≤ 0: gold still rising)")
            out.append(f"Gold gain against d = √KL follows d(α − β log d) with α = {self.fit.alpha:.3g}, β = "
                       f"{self.fit.beta:.3g}, R² = {self.fit.r2:.2f} over {self.fit.points} smoothed points; {where}.")
        if self.disagreement_start is not None:
            rise = self.disagreement_rise_step
            when = ("it did not grow by 25% over its start" if rise is None else f"it was 25% above its start by step {rise}"
                    + (f", {self.peak_step - rise} steps before the gold peak" if rise < self.peak_step else
                       ", not before the gold peak"))
            out.append(f"Ensemble disagreement (reward/ensemble_std) went {self.disagreement_start:.3g} → "
                       f"{self.disagreement_peak:.3g} at the gold peak → {self.disagreement_end:.3g} at the end; {when}.")
        return out


def _smooth(vals: list[float], w: int) -> list[float]:
    return [sum(vals[max(0, i - w + 1) : i + 1]) / len(vals[max(0, i - w + 1) : i + 1]) for i in range(len(vals))]


def overoptimisation(rows: Sequence[dict], window: int = 5, gold_key: str = "gold/mean",
                     proxy_key: str = "reward/mean") -> OverOpt | None:
    """The gold peak and what followed, from an online RL stage's rows; None without at least
    3 windows of rows carrying both gold and kl/mean."""
    both = [r for r in rows if _num(r.get(gold_key)) and _num(r.get("kl/mean")) and _num(r.get("step"))]
    w = max(1, window)
    if len(both) < 3 * w:
        return None
    steps = [int(r["step"]) for r in both]
    gold = _smooth([r[gold_key] for r in both], w)
    kl = _smooth([r["kl/mean"] for r in both], w)
    i = max(range(w - 1, len(both)), key=gold.__getitem__)  # full windows only
    # Step-to-step noise of one step's gold: differences of neighbours have variance 2σ² plus the
    # trend's (small) share, so σ ≈ sd(diff)/√2; a w-step mean then has standard error σ/√w, and
    # the difference of two disjoint window means √2 of that.
    raw = [r[gold_key] for r in both]
    diffs = [b - a for a, b in itertools.pairwise(raw)]
    md = sum(diffs) / len(diffs)
    sigma = math.sqrt(sum((x - md) ** 2 for x in diffs) / max(len(diffs) - 1, 1) / 2)
    proxy = _smooth([r[proxy_key] for r in both], w) if all(_num(r.get(proxy_key)) for r in both) else None
    dis = [r.get("reward/ensemble_std") for r in both]
    dis_s = _smooth(dis, w) if all(_num(x) for x in dis) else None
    rise = None
    if dis_s is not None and dis_s[w - 1] > 0:
        rise = next((steps[j] for j in range(w, len(both)) if dis_s[j] >= 1.25 * dis_s[w - 1]), None)
    points = [(math.sqrt(max(k, 0.0)), g - gold[w - 1]) for k, g in zip(kl[w - 1 :], gold[w - 1 :], strict=True)]
    try:
        fit = fit_law([p[0] for p in points], [p[1] for p in points], "rl")
    except ValueError:
        fit = None
    return OverOpt(
        window=w, steps=steps[-1], gold_start=gold[w - 1], gold_peak=gold[i], peak_step=steps[i], peak_kl=kl[i],
        gold_end=gold[-1], kl_end=kl[-1], proxy_peak=proxy[i] if proxy else None, proxy_end=proxy[-1] if proxy else None,
        fall_se=math.sqrt(2) * sigma / math.sqrt(w), points=tuple(points), fit=fit,
        disagreement_start=dis_s[w - 1] if dis_s else None, disagreement_peak=dis_s[i] if dis_s else None,
        disagreement_end=dis_s[-1] if dis_s else None, disagreement_rise_step=rise)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
