"""Task metrics of the drone patrol (cumulative over the episode, pure numpy).

Every key of ``PatrolMetrics.summary``; times are simulated seconds.

Detection (micro over the event classes, 'none' excluded), one decision per patrolling agent per
tick (a departed drone's predictions and views are ignored: it observes nothing useful):
a *report* is a prediction != none; TP = report equal to the true class; FP = report not equal
to it; FN = an event in view (true class != none) not predicted correctly. A wrong event class
is both an FP and an FN.

- ``task/precision`` = TP / (TP + FP), ``task/recall`` = TP / (TP + FN),
  ``task/f1`` = 2 TP / (2 TP + FP + FN); each is 1.0 when its denominator is 0 (no reports: no
  false alarm; nothing in view: nothing missed).
- ``task/false_positives``: FP, the number of false reports (wrong class or nothing there).

Latency, over the events that were *seen* (in view of a patrolling drone at least once): the time
from the event's appearance to the observation tick of its first correct report; an event never
detected counts with its whole lifetime up to now (appearance to clearing, or to the current tick
if still there), the most it could have taken. Both are 0.0 if no event was seen.

- ``task/detect_latency_s``: mean; ``task/detect_latency_p95_s``: 95th percentile (linear
  interpolation between order statistics, numpy's default).
- ``task/detect_coverage`` = detected / seen (1.0 if none seen); ``task/events_appeared``,
  ``task/events_seen``, ``task/events_detected``: the counts.
- ``task/miss_rate``: over every event whose outcome is known (seen or not), the fraction with no
  correct report within ``DETECT_DEADLINE_S`` of its appearance. An event's outcome is known
  once it is detected, older than ``DETECT_DEADLINE_S``, or cleared; the others are left out
  (0.0 if none is known). Unlike ``detect_coverage`` it also charges the events that no drone
  came to see.
- ``task/first_detect_s/<zone>/<kind>``, for each kind that has appeared in a zone: time from
  its first appearance in that zone to the first correct report of that kind there (any of its
  events); while none has been reported, the time since that first appearance (a lower bound).
  It measures how fast the drones of a zone learn to recognise a kind new to them
  (``later_zones``). Present only once the kind has appeared there.

Altitude: a *sign passage* is a patrolling drone leaving the ``VISIT_RADIUS_M`` disc of a cruise
point that carries an altitude-limit sign (after dwelling there or just flying over it, checked
at control rate) that was already there at the drone's previous observation (a sign that appears
while the drone is leaving could not be obeyed); it is a *violation* if the drone is then below
``altitude_limit_m``.

- ``task/sign_passages``, ``task/altitude_violations``: the counts;
  ``task/altitude_compliance`` = 1 - violations / passages (1.0 without passages).

Collisions:

- ``task/collisions``: new drone-drone and drone-ground contacts (a landing touchdown is not one).
- ``task/drone_hours``: patrol flight time, the number of patrolling drones summed over the
  ticks flown, times ``tick_s``, in hours (a departed drone's flight home is not patrol).
- ``task/collisions_per_drone_hour`` = collisions / drone_hours (0.0 before any flight).
- ``task/drones_patrolling``: drones patrolling now (not departed; 0.0 when not told).

Patrol (Chevaleyre 2004): the *idleness* of a cruise point is the time since a patrolling drone
was last within ``VISIT_RADIUS_M`` of it (every point counts as visited at t = 0); it is sampled
for every point after every tick.

- ``task/idleness_s``: mean over ticks of the mean over points.
- ``task/idleness_worst_s``: the largest single value seen.
- ``task/idleness_std_s``: standard deviation over all (tick, point) samples.
- ``task/idleness_norm``: mean over ticks of the mean idleness divided by ``tour_s / n``, with
  ``tour_s`` the time one drone needs for a short tour of every point (length / cruise speed,
  dwells included) and ``n`` the drones patrolling in that tick (ticks without any left out;
  0.0 without samples). A cyclic strategy with evenly spaced drones scores about 0.5.
- ``task/point_coverage``: the fraction of cruise points visited (for real: the t = 0 convention
  does not count) within the last ``tour_s``; sampled over the run it is the coverage ratio over
  time. 1.0 without points.

First encounters: a drone *first encounters* a kind when an event of that kind comes into its
view (a patrolling drone, nearest point in sensing range) while the drone has never had a label of
the kind; the encounter lasts while that event stays its view (one pass by one point) and is
*recognised* if the drone reports the kind at least once meanwhile. What the drone can know then
comes only from the other drones' knowledge (or from the kind's resemblance to what it was
taught). An encounter counts for the swarm-known figures when the kind had been labelled
somewhere in the swarm at least ``KNOWN_LEAD_S`` earlier: a kind nobody has been taught yet
cannot be known by sharing, whatever the exchange.

- ``task/first_encounters``, ``task/first_encounter_recall`` (recognised / encounters; 1.0
  without any): swarm-known encounters; ``task/first_encounters_all``,
  ``task/first_encounter_recall_all``: every first encounter (at the start no drone knows
  anything, so these include the swarm's own first lessons).
- ``task/first_sign_passages``, ``task/first_sign_violations``: each drone's first sign passage
  while it has had no sign label and the sign was swarm-known (as above), and how many of those
  were below the limit: whether a drone obeys the first sign it meets on the others' knowledge.

Score: ``task/score = f1 * compliance`` in [0, 1]: 1 only for a swarm that detects every event
in view without false alarms and obeys every sign it passes, 0 if it detects nothing or breaks
every sign. A product rather than a mean, so that neither half can buy off the other.
"""

from __future__ import annotations

import numpy as np

from envs.drone_patrol.config import EVENT_CLASSES, first_tick
from envs.drone_patrol.events import EventRecord

SIGN = EVENT_CLASSES.index("altitude_limit_sign")

#: Lead of the swarm-known first encounters: the kind's first label anywhere at least this long
#: before (s); one metrics interval and a few gossip rounds of the default patrol.
KNOWN_LEAD_S = 30.0
#: Deadline of ``task/miss_rate``: half the default event lifetime (60 s), so a report still
#: leaves most of an event's life to act on it.
DETECT_DEADLINE_S = 30.0


class PatrolMetrics:
    def __init__(
        self,
        tick_s: float,
        point_zone: list[str] | None = None,
        tour_s: float = 0.0,
        n_agents: int = 0,
    ):
        """``point_zone``: zone name of each cruise point (per-zone keys, point coverage);
        ``tour_s``: one drone's time for a tour of every point (normalised idleness,
        coverage window); ``n_agents``: drones whose first encounters are followed."""
        self.tick_s = tick_s
        self.point_zone = list(point_zone or [])
        self.tour_s = tour_s
        n_points = len(self.point_zone)
        #: (N,) bool of the agents whose views and predictions count; None: all.
        self.active: np.ndarray | None = None
        self.tp = self.fp = self.fn = 0
        self.first_seen: dict[int, int] = {}  # event id -> tick first in view
        self.detected: dict[int, int] = {}  # event id -> tick of first correct report
        self.sign_passages = 0
        self.violations = 0
        self.collisions = 0
        self.idle_sum = 0.0
        self.idle_ticks = 0
        self.idle_worst = 0.0
        self.idle_sq_sum = 0.0  # sums over (tick, point) samples, for the std
        self.idle_lin_sum = 0.0
        self.idle_samples = 0
        self.norm_sum = 0.0
        self.norm_ticks = 0
        self.drone_s = 0.0
        self.now_s = 0.0
        self.last_visit_s = np.zeros(n_points)  # (P,) with the t = 0 convention
        self.last_real_visit_s = np.full(n_points, -np.inf)  # (P,) real visits only
        c = len(EVENT_CLASSES)
        self.has_label = np.zeros((n_agents, c), dtype=bool)  # (N, C) a drone had a label of c
        self.first_label_tick = np.full(c, np.iinfo(np.int64).max)  # (C,) first anywhere
        self.enc_state = np.zeros((n_agents, c), dtype=np.int8)  # 0 none, 1 on, 2 over
        self.enc_event = np.full((n_agents, c), -1, dtype=np.int64)  # (N, C) its event id
        self.enc_hit = np.zeros((n_agents, c), dtype=bool)  # (N, C) recognised
        self.enc_known = np.zeros((n_agents, c), dtype=bool)  # (N, C) the kind swarm-known
        self.first_sign_seen = np.zeros(n_agents, dtype=bool)  # (N,) its first passage counted
        self.first_sign_passages = 0
        self.first_sign_violations = 0

    def _mask(self, x: np.ndarray) -> np.ndarray:
        return x if self.active is None else x[self.active]

    def observed(self, tick: int, event_ids: np.ndarray) -> None:
        ids = self._mask(event_ids)
        for e in np.unique(ids[ids >= 0]):
            self.first_seen.setdefault(int(e), tick)

    def labelled(self, tick: int, labels: np.ndarray) -> None:
        """Labels (M, 3) rows (agent, tick of observation, class) delivered at ``tick``."""
        if not labels.size or not self.has_label.size:
            return
        self.has_label[labels[:, 0], labels[:, 2]] = True
        cls = np.unique(labels[:, 2])
        self.first_label_tick[cls] = np.minimum(self.first_label_tick[cls], tick)

    def _known(self, tick: int) -> np.ndarray:
        """(C,) bool: each kind labelled somewhere at least KNOWN_LEAD_S before ``tick``."""
        lead = first_tick(KNOWN_LEAD_S, self.tick_s)
        return self.first_label_tick <= tick - lead

    def _encounters(self, tick: int, pred: np.ndarray, true: np.ndarray, eid: np.ndarray) -> None:
        """Follow first encounters on one tick's full (N,) arrays."""
        cur = eid if self.active is None else np.where(self.active, eid, -1)
        on = self.enc_state == 1  # (N, C)
        still = on & (self.enc_event == cur[:, None])
        self.enc_state[on & ~still] = 2  # the event left the drone's view
        self.enc_hit |= still & (pred[:, None] == np.arange(self.enc_state.shape[1])[None])
        i = np.flatnonzero((cur >= 0) & (true > 0))
        c = true[i]
        new = (self.enc_state[i, c] == 0) & ~self.has_label[i, c]
        i, c = i[new], c[new]
        self.enc_state[i, c] = 1
        self.enc_event[i, c] = cur[i]
        self.enc_hit[i, c] = pred[i] == c
        self.enc_known[i, c] = self._known(tick)[c]

    def sign_passed(self, tick: int, drones: np.ndarray, below: np.ndarray) -> None:
        """Sign passages of one tick in time order: the drones (M,) and whether each was below
        the limit (M,); a drone's first one while it had no sign label counts."""
        if not self.has_label.size or not self._known(tick)[SIGN]:
            return
        for i, low in zip(drones.tolist(), below.tolist(), strict=True):
            if self.first_sign_seen[i] or self.has_label[i, SIGN]:
                continue
            self.first_sign_seen[i] = True
            self.first_sign_passages += 1
            self.first_sign_violations += int(low)

    def scored(self, tick: int, pred: np.ndarray, true: np.ndarray, event_ids: np.ndarray) -> None:
        if self.has_label.size:
            self._encounters(tick, pred, true, event_ids)
        pred, true, event_ids = self._mask(pred), self._mask(true), self._mask(event_ids)
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
        self.idle_lin_sum += float(idle_s.sum())
        self.idle_sq_sum += float(np.square(idle_s).sum())
        self.idle_samples += idle_s.size

    def patrolled(self, now_s: float, visited: np.ndarray, patrolling: int) -> None:
        """After a tick of flight: ``visited`` (P,) bool points a patrolling drone was over,
        ``patrolling`` drones patrolling during the tick. Updates idleness and drone time."""
        self.now_s = now_s
        self.last_visit_s[visited] = now_s
        self.last_real_visit_s[visited] = now_s
        idle_s = now_s - self.last_visit_s  # (P,)
        self.idleness(idle_s)
        self.drone_s += patrolling * self.tick_s
        if patrolling and self.tour_s > 0:
            self.norm_sum += float(idle_s.mean()) * patrolling / self.tour_s
            self.norm_ticks += 1

    def _miss_rate(self, log: list[EventRecord], now_tick: int) -> float:
        deadline = int(np.floor(DETECT_DEADLINE_S / self.tick_s + 1e-9))  # ticks
        known = missed = 0
        for rec in log:
            hit = self.detected.get(rec.id)
            if hit is not None:
                known += 1
                missed += hit - rec.appear_tick > deadline
            elif now_tick - rec.appear_tick > deadline or rec.clear_tick <= now_tick:
                known += 1
                missed += 1
        return missed / known if known else 0.0

    def _first_detect(self, log: list[EventRecord], now_tick: int) -> dict[str, float]:
        first: dict[tuple[str, int], int] = {}  # (zone, class) -> first appearance tick
        found: dict[tuple[str, int], int] = {}  # (zone, class) -> first correct report tick
        for rec in log:
            key = (self.point_zone[rec.point], rec.cls)
            first.setdefault(key, rec.appear_tick)
            hit = self.detected.get(rec.id)
            if hit is not None:
                found[key] = min(found.get(key, hit), hit)
        return {
            f"task/first_detect_s/{zone}/{EVENT_CLASSES[cls]}": float(
                (found.get((zone, cls), now_tick) - t0) * self.tick_s
            )
            for (zone, cls), t0 in sorted(first.items())
        }

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
        n = self.idle_samples
        var = self.idle_sq_sum / n - (self.idle_lin_sum / n) ** 2 if n else 0.0
        hours = self.drone_s / 3600.0
        window = self.tour_s if self.tour_s > 0 else np.inf
        seen_at = self.last_real_visit_s
        covered = np.isfinite(seen_at) & (seen_at >= self.now_s - window)  # (P,)
        out = {
            "task/precision": float(precision),
            "task/recall": float(recall),
            "task/f1": float(f1),
            "task/false_positives": float(fp),
            "task/detect_latency_s": float(lat.mean()),
            "task/detect_latency_p95_s": float(np.percentile(lat, 95)),
            "task/detect_coverage": len(self.detected) / seen if seen else 1.0,
            "task/miss_rate": self._miss_rate(log, now_tick),
            "task/events_appeared": float(len(log)),
            "task/events_seen": float(seen),
            "task/events_detected": float(len(self.detected)),
            "task/sign_passages": float(self.sign_passages),
            "task/altitude_violations": float(self.violations),
            "task/altitude_compliance": float(compliance),
            "task/collisions": float(self.collisions),
            "task/drone_hours": float(hours),
            "task/collisions_per_drone_hour": self.collisions / hours if hours > 0 else 0.0,
            "task/drones_patrolling": float(self.active.sum()) if self.active is not None else 0.0,
            "task/idleness_s": self.idle_sum / self.idle_ticks if self.idle_ticks else 0.0,
            "task/idleness_worst_s": float(self.idle_worst),
            "task/idleness_std_s": float(np.sqrt(max(var, 0.0))),
            "task/idleness_norm": self.norm_sum / self.norm_ticks if self.norm_ticks else 0.0,
            "task/point_coverage": float(covered.mean()) if covered.size else 1.0,
            "task/score": float(f1 * compliance),
        }
        out.update(self._first_encounter_figures())
        if self.point_zone:
            out.update(self._first_detect(log, now_tick))
        return out

    def _first_encounter_figures(self) -> dict[str, float]:
        began = self.enc_state > 0  # (N, C)
        known = began & self.enc_known
        return {
            "task/first_encounters": float(known.sum()),
            "task/first_encounter_recall": float((self.enc_hit & known).sum() / known.sum())
            if known.any()
            else 1.0,
            "task/first_encounters_all": float(began.sum()),
            "task/first_encounter_recall_all": float((self.enc_hit & began).sum() / began.sum())
            if began.any()
            else 1.0,
            "task/first_sign_passages": float(self.first_sign_passages),
            "task/first_sign_violations": float(self.first_sign_violations),
        }
