"""Task metrics of the drone patrol (cumulative over the episode, pure numpy).

Detection (micro over the event classes, 'none' excluded), one decision per agent per tick:
a *report* is a prediction != none; TP = report equal to the true class; FP = report not equal
to it; FN = an event in view (true class != none) not predicted correctly. A wrong event class
is both an FP and an FN. precision = TP / (TP + FP), recall = TP / (TP + FN),
f1 = 2 TP / (2 TP + FP + FN); each is 1.0 when its denominator is 0 (no reports: no false
alarm; nothing in view: nothing missed).

Latency: over the events that were *seen* (in view of a drone at least once), the time from the
event's appearance to the observation tick of its first correct report; an event never detected
counts with its whole lifetime up to now (appearance to clearing, or to the current tick if still
there), the most it could have taken. 0.0 if no event was seen. Coverage = detected / seen.

Altitude: a *sign passage* is a drone leaving the ``VISIT_RADIUS_M`` disc of a cruise point that
carries an altitude-limit sign (after dwelling there or just flying over it, checked at control
rate); it is a *violation* if the drone is then below ``altitude_limit_m``.
compliance = 1 - violations / passages (1.0 without passages).

Idleness: each tick, the mean over cruise points of the time since a drone was last within
``VISIT_RADIUS_M`` of it (every point counts as visited at t = 0); ``task/idleness_s`` is the mean
of that over the ticks, ``task/idleness_worst_s`` the largest single value seen.

Score: ``task/score = f1 * compliance`` in [0, 1]: 1 only for a swarm that detects every event
in view without false alarms and obeys every sign it passes, 0 if it detects nothing or breaks
every sign. A product rather than a mean, so that neither half can buy off the other.
"""

from __future__ import annotations

import numpy as np

from envs.drone_patrol.events import EventRecord


class PatrolMetrics:
    def __init__(self, tick_s: float):
        self.tick_s = tick_s
        self.tp = self.fp = self.fn = 0
        self.first_seen: dict[int, int] = {}  # event id -> tick first in view
        self.detected: dict[int, int] = {}  # event id -> tick of first correct report
        self.sign_passages = 0
        self.violations = 0
        self.collisions = 0
        self.idle_sum = 0.0
        self.idle_ticks = 0
        self.idle_worst = 0.0

    def observed(self, tick: int, event_ids: np.ndarray) -> None:
        for e in np.unique(event_ids[event_ids >= 0]):
            self.first_seen.setdefault(int(e), tick)

    def scored(self, tick: int, pred: np.ndarray, true: np.ndarray, event_ids: np.ndarray) -> None:
        report = pred != 0
        hit = report & (pred == true)
        self.tp += int(hit.sum())
        self.fp += int((report & (pred != true)).sum())
        self.fn += int(((true != 0) & (pred != true)).sum())
        for e in np.unique(event_ids[hit & (event_ids >= 0)]):
            self.detected.setdefault(int(e), tick)

    def idleness(self, idle_s: np.ndarray) -> None:
        self.idle_sum += float(idle_s.mean())
        self.idle_ticks += 1
        self.idle_worst = max(self.idle_worst, float(idle_s.max()))

    def summary(self, log: list[EventRecord], now_tick: int) -> dict[str, float]:
        tp, fp, fn = self.tp, self.fp, self.fn
        precision = tp / (tp + fp) if tp + fp else 1.0
        recall = tp / (tp + fn) if tp + fn else 1.0
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
        latencies = []
        for e in self.first_seen:
            rec = log[e]
            end = self.detected.get(e, min(rec.clear_tick, now_tick))
            latencies.append((end - rec.appear_tick) * self.tick_s)
        lat = np.array(latencies) if latencies else np.zeros(1)
        seen = len(self.first_seen)
        compliance = 1.0 - self.violations / self.sign_passages if self.sign_passages else 1.0
        return {
            "task/precision": float(precision),
            "task/recall": float(recall),
            "task/f1": float(f1),
            "task/detect_latency_s": float(lat.mean()),
            "task/detect_latency_p95_s": float(np.percentile(lat, 95)),
            "task/detect_coverage": len(self.detected) / seen if seen else 1.0,
            "task/events_appeared": float(len(log)),
            "task/events_seen": float(seen),
            "task/events_detected": float(len(self.detected)),
            "task/sign_passages": float(self.sign_passages),
            "task/altitude_violations": float(self.violations),
            "task/altitude_compliance": float(compliance),
            "task/collisions": float(self.collisions),
            "task/idleness_s": self.idle_sum / self.idle_ticks if self.idle_ticks else 0.0,
            "task/idleness_worst_s": float(self.idle_worst),
            "task/score": float(f1 * compliance),
        }
