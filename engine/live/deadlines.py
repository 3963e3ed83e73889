"""Deadlines of a live session: when to force a frame, which frames to skip, how late input may be.

Owner: the event loop (the producer task reads these estimates every wake-up). The one exception is
:meth:`Deadlines.record_cost`, called from the model worker: it appends to a bounded ``deque`` (atomic in
CPython) and the loop only copies it. Pure arithmetic on wall-clock seconds: testable without a session.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

MIN_GAP_TOLERANCE_S = 0.10  # input later than max(this, delay - one chunk) counts as a gap (stalled source)
FORCE_SAFETY_S = 0.01
PROBE_AFTER_S = 0.3  # nothing rendered for this long: try the next frame even if the cost estimate says no
COST_WINDOW = 30  # recent jobs whose cost the estimate looks at


class Deadlines:
    """Cost estimate of the render path and the horizons derived from it.

    ``delay_s`` is the session's constant output delay, ``chunk_s`` the capture chunk, ``compute_margin``
    returns the time the latency budget reserves for decode + render (the runtime's, which a re-measurement
    may change), ``initial_cost_s`` is the first cost estimate.
    """

    def __init__(self, delay_s: float, chunk_s: float, compute_margin: Callable[[], float],
                 initial_cost_s: float) -> None:
        self.delay_s = delay_s
        self.chunk_s = chunk_s
        self._compute_margin = compute_margin
        # job submitted -> its first frame rendered (s), recent jobs; seeded with the runtime's measurement
        self.first_costs: deque[float] = deque([initial_cost_s], maxlen=COST_WINDOW)
        self.last_job_end = 0.0  # wall time the last decode/render job finished (set at start)
        self._probing = False  # set by the loop when the estimate went stale; the next recorded cost resets it

    def record_cost(self, seconds: float) -> None:
        """Model worker: one job's time from submission to its first rendered frame.

        After a probe the window starts over from the probe's cost: the old window is what made every frame look
        hopeless (e.g. jobs queued behind the avatar's preparation at start), and 80th-percentile of 30 jobs
        would need ~24 new jobs to forget it while only one probe runs every ``PROBE_AFTER_S``: a session then
        showed 1 fresh frame per second on an idle machine (benchmarks/results/e2e_sessions.json).
        """
        if self._probing:
            self._probing = False
            self.first_costs.clear()
        self.first_costs.append(seconds)

    def job_done(self, now: float) -> None:
        self.last_job_end = now

    def est_first(self) -> float:
        """80th percentile of recent job costs (submitted -> first frame rendered)."""
        costs = sorted(self.first_costs)
        return costs[int(0.8 * (len(costs) - 1))]

    def force_horizon(self) -> float:
        """How long before its due time a frame is decoded even without its lookahead (expected compute)."""
        # at most 3/4 of the budgeted margin: a frame whose phonemes arrive on time is never forced
        return min(0.75 * self._compute_margin(), FORCE_SAFETY_S + self.est_first())

    def skip_horizon(self, now: float) -> float:
        """Frames due sooner than this cannot be rendered in time (expected cost of one frame).

        When nothing has been rendered for a while the estimate may be stale (one slow spell): then only
        frames already due are skipped, so the next job probes the real cost and rendering resumes.
        """
        if now - self.last_job_end > PROBE_AFTER_S:
            self._probing = True
            return 0.0
        return self.est_first()

    def gap_tolerance(self) -> float:
        """How late input may arrive and still be placed contiguously.

        Audio later than the output delay (minus one chunk) would be needed by the output before it arrives,
        so it is treated as a gap: zeros fill the timeline and the late audio follows them. Anything less
        late is placed where it belongs (jitter, a busy machine), keeping the output bit-exact.
        """
        return max(MIN_GAP_TOLERANCE_S, self.delay_s - self.chunk_s)
