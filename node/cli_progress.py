"""A job's progress on stderr: a redrawn bar on a terminal, a few plain lines anywhere else.

On a terminal one line is redrawn with ``\\r``::

    [##########..........]  50%  step 1/2  running on 12D3KooW…a1b2c3

When stderr is a file or a pipe (CI logs, tests) redrawing would leave
garbage, so a line is written only on a state change, at the first progress
and at each quarter of the way. No terminal library: plain text, fixed width.

A try that fails (refusal, timeout, disconnect, a bad result) moves the job to
another peer (the requester retries), and its progress starts over there. The
node's ``attempt`` events say so, and why; the move is said on a line of its own,
on a terminal too, once the next try starts (so a bar going back is never a mystery)::

    img2vid: 12D3KooW…a1b2c3 failed: disconnected (stream reset); trying 12D3KooW…d4e5f6

A node too old to send ``attempt`` events shows a move only as progress from
another peer; that is still inferred (with less to say) until the first
``attempt`` event shows the node sends them::

    img2vid: 12D3KooW…a1b2c3 stopped at step 10/20; the job moved to 12D3KooW…d4e5f6
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from lpnode.node.cli_format import short_peer_id

BAR_WIDTH = 20
QUARTERS = 4  # plain lines at 25%, 50%, 75%, 100%
DETAIL_CHARS = 100  # of a failed try's detail on its line: the record (`lpnode job ID`) has all of it
_BOUNDARY = 1e-9  # a workflow fraction this close to a step boundary is on it (float rounding)


def bar_text(label: str, state: str, progress: Mapping[str, Any]) -> str:
    """One line for ``progress`` = ``{"fraction", "step", "total", "peer_id"}`` (any may be missing)."""
    fraction = _fraction(progress)
    filled = round(fraction * BAR_WIDTH)
    parts = [f"{label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction * 100:3.0f}%"]
    total = progress.get("total")
    if isinstance(total, int) and total > 0:
        parts.append(f"step {progress.get('step', 0)}/{total}")
    peer_id = progress.get("peer_id")
    if isinstance(peer_id, str) and peer_id:
        parts.append(f"{state} on {short_peer_id(peer_id)}")
    else:
        parts.append(state)
    return "  ".join(parts)


def _fraction(progress: Mapping[str, Any]) -> float:
    value = progress.get("fraction")
    if not isinstance(value, int | float):
        return 0.0
    return min(1.0, max(0.0, float(value)))


class ProgressDisplay:
    """Draws one job's progress; feed it :meth:`state`, :meth:`progress` and :meth:`attempt`, then :meth:`close`."""

    def __init__(self, out: TextIO, label: str, *, tty: bool | None = None, images: int = 1) -> None:
        self._out = out
        self._label = label
        # One image: every progress event is its one try's, so a new peer is a new try. Several run side by
        # side on different peers and their events interleave: a new try shows as the step count going back.
        self._images = max(1, images)
        self._tty = out.isatty() if tty is None else tty
        self._state = "submitted"
        self._progress: dict[str, Any] = {}
        self._quarter = -1  # last quarter written as a plain line
        self._width = 0  # of the drawn line, to blank leftovers when it shrinks
        self._open = False
        self._attempt_events = False  # the node sends them: moves are said from them, not inferred from progress
        # per network job (workflow step, image): the try that failed, said when the next one starts
        self._failed: dict[tuple[object, object], Mapping[str, Any]] = {}

    def state(self, state: str) -> None:
        if state == self._state:
            return
        self._state = state
        if self._tty:
            self._draw()
        else:
            self._line(f"{self._label}: {state}")

    def attempt(self, data: Mapping[str, Any]) -> None:
        """An ``attempt`` event: a failed try is said, with the peer taking the job, when the next try starts.

        A failure with no try after it is not: the job failed, and its error lists every attempt.
        """
        self._attempt_events = True
        job = (data.get("workflow_step"), data.get("image"))  # one network job: its tries follow each other
        if data.get("stage") == "end" and data.get("ok") is False:
            self._failed[job] = data
            return
        if data.get("stage") != "start" or (failed := self._failed.pop(job, None)) is None:
            return
        self.note(f"{self._attempt_label(data)}: {failed_text(failed, data)}")
        if self._images == 1:
            self._quarter = -1  # the new try's quarters are shown from its start
            self._progress = {"peer_id": data.get("peer_id")} if isinstance(data.get("peer_id"), str) else {}

    def _attempt_label(self, data: Mapping[str, Any]) -> str:
        if self._images == 1:
            return self._label
        image = data.get("image")
        return f"{self._label} image {image + 1 if isinstance(image, int) else '?'}/{self._images}"

    def progress(self, progress: Mapping[str, Any]) -> None:
        if not self._attempt_events and (moved := self._moved_text(progress)):
            self.note(moved)
            self._quarter = -1  # the new try's quarters are shown from its start
        self._progress = dict(progress)
        if self._state in ("submitted", "queued"):
            self._state = "running"
        if self._tty:
            self._draw()
            return
        quarter = int(_fraction(progress) * QUARTERS)
        if quarter > self._quarter:  # the first progress (the job runs), then each quarter
            self._quarter = quarter
            self._line(bar_text(self._label, self._state, self._progress))

    def relabel(self, label: str) -> None:
        """A new phase (a workflow's next step): its own label, and its own quarters from 0."""
        self._label = label
        self._quarter = -1
        self._progress = {}  # the next phase's first peer is not a move from this one's

    def note(self, text: str) -> None:
        """A line of its own (ending a redrawn bar first); the bar is drawn again by the next update."""
        self.close()
        self._line(text)

    def _moved_text(self, progress: Mapping[str, Any]) -> str:
        """The line saying the job moved to another peer, if ``progress`` shows it did ("" if not)."""
        before, after = self._progress.get("peer_id"), progress.get("peer_id")
        if not (isinstance(before, str) and before and isinstance(after, str) and after) or before == after:
            return ""
        if self._images == 1:
            where = f"step {self._progress.get('step', 0)}/{self._progress.get('total', '?')}"
            return f"{self._label}: {short_peer_id(before)} stopped at {where}; the job moved to {short_peer_id(after)}"
        step_before, step_after = self._progress.get("step"), progress.get("step")
        if isinstance(step_before, int) and isinstance(step_after, int) and step_after < step_before:
            return f"{self._label}: an image's worker stopped; it moved to {short_peer_id(after)}"
        return ""  # another image's worker: images run side by side

    def close(self) -> None:
        """End the redrawn line so what follows starts on its own."""
        if self._tty and self._open:
            self._out.write("\n")
            self._out.flush()
            self._open = False

    def _draw(self) -> None:
        text = bar_text(self._label, self._state, self._progress)
        self._out.write("\r" + text.ljust(self._width))
        self._out.flush()
        self._width = len(text)
        self._open = True

    def _line(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()


def failed_text(failed: Mapping[str, Any], next_try: Mapping[str, Any]) -> str:
    """``12D3KooW…a1b2c3 failed: disconnected (stream reset); trying 12D3KooW…d4e5f6``."""
    peer, after = str(failed.get("peer_id", "?")), str(next_try.get("peer_id", "?"))
    detail = " ".join(str(failed.get("detail") or "").split())  # one line, whatever the worker wrote
    detail = detail.replace(peer, short_peer_id(peer))  # network errors name the peer in full
    if len(detail) > DETAIL_CHARS:
        detail = detail[: DETAIL_CHARS - 1] + "…"
    why = str(failed.get("outcome") or "failed") + (f" ({detail})" if detail else "")
    trying = f"asking {short_peer_id(after)} again" if after == peer else f"trying {short_peer_id(after)}"
    return f"{short_peer_id(peer)} failed: {why}; {trying}"


class WorkflowProgress(ProgressDisplay):
    """A workflow's progress shown per step.

    The node scales each step's progress into the workflow's (``fraction`` =
    (step index + the step's own fraction) / steps), so the step and its share
    are recovered here.
    """

    def __init__(self, out: TextIO, pipelines: Sequence[str], *, tty: bool | None = None) -> None:
        super().__init__(out, self._step_label(0, pipelines), tty=tty)
        self._pipelines = list(pipelines) or ["?"]
        self._index = 0

    def _attempt_label(self, data: Mapping[str, Any]) -> str:
        """The step the try belongs to (``workflow_step``, from 1), whichever step the bar shows."""
        step = data.get("workflow_step")
        if not isinstance(step, int) or step < 1:
            return self._label
        return self._step_label(step - 1, self._pipelines)

    @staticmethod
    def _step_label(index: int, pipelines: Sequence[str]) -> str:
        name = pipelines[index] if index < len(pipelines) else "?"
        return f"step {index + 1}/{max(1, len(pipelines))} {name}"

    def state(self, state: str) -> None:
        if state in ("failed", "cancelled", "interrupted"):
            # The error that follows names the step that failed. The bar may still show the step before
            # it: a step refused before its first progress (e.g. the workflow's budget spent) never moved it.
            self._label = "workflow"
        super().state(state)

    def progress(self, progress: Mapping[str, Any]) -> None:
        count = len(self._pipelines)
        overall = _fraction(progress) * count
        index = min(count - 1, int(overall + _BOUNDARY))
        total = progress.get("total")
        if index > 0 and overall - index < _BOUNDARY and isinstance(total, int) and progress.get("step") == total > 0:
            # exactly on a boundary with its own last step: the end of the step before, not the start of the
            # next (whose line would otherwise show the finished step's counter and worker)
            index -= 1
        overall = max(overall, float(index))
        if index != self._index:
            self._index = index
            self.relabel(self._step_label(index, self._pipelines))
        super().progress({**progress, "fraction": overall - index})


__all__ = ["ProgressDisplay", "WorkflowProgress", "bar_text", "failed_text"]
