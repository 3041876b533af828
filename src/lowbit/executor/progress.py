"""One progress display for a batch of jobs: done/total, how many run now, how many failed."""

from __future__ import annotations

from typing import Any


class JobProgress:
    """A tqdm bar over jobs; the postfix shows running and failed counts, the description the
    latest note (the running job's step, or a preparation step before the jobs)."""

    def __init__(self, total: int, *, desc: str = "jobs", unit: str = "job",
                 disable: bool = False) -> None:
        from tqdm.auto import tqdm

        self.bar: Any = tqdm(total=total, desc=desc, unit=unit, disable=disable)
        self.running: set[str] = set()
        self.total, self.done, self.failed, self.retried = total, 0, 0, 0
        self._show()

    def _show(self) -> None:
        self.bar.set_postfix(running=len(self.running), failed=self.failed,
                             retried=self.retried, refresh=False)
        self.bar.refresh()

    def note(self, text: str) -> None:
        self.bar.set_description(text[:60], refresh=True)

    def note_running(self) -> None:
        """The description as the jobs running now (an executor whose jobs log elsewhere)."""
        self.note("running: " + ", ".join(sorted(self.running)) if self.running else "done")

    def started(self, key: str) -> None:
        self.running.add(key)
        self._show()

    def requeued(self, key: str) -> None:
        """A failed attempt that will be tried again."""
        self.running.discard(key)
        self.retried += 1
        self._show()

    def finished(self, key: str, *, ok: bool) -> None:
        self.running.discard(key)
        self.done += 1
        self.failed += not ok
        self.bar.update(1)
        self._show()

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> JobProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
