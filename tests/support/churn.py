"""A busy Docker engine: containers labelled like cdlib's appear and vanish while a test runs.

``Churn`` creates and removes, in a background thread and a bounded loop, containers that carry
cdlib's labels: test-suite containers of the service under test (``cdlib.test=1``, the service
label, no color) and instances of another service (service, color and release labels). A few are
alive at any time, each removed a few rounds after it was created; about one in three is started,
so listings see running ones too. This is what an
engine shared by several services releasing at once looks like to each of them.

Use it as a context manager: entering waits until the loop has made a few rounds (so the code under
test really runs while containers vanish); leaving stops the loop, joins the thread, removes
whatever it left, and raises the first error the loop met.
"""

from __future__ import annotations

import secrets
import threading

import docker

TEST_LABEL = "cdlib.test"  # what cdlib.testrun.container puts on a suite's container


class Churn:
    def __init__(self, image: str, service: str, *, other: str | None = None, rounds: int = 3000,
                 warm_up: int = 10, window: int = 6):
        self.image = image
        self.service = service
        self.other = other or f"{service}-other"
        self.rounds = rounds  # the bound: the loop ends after this many rounds even if not stopped
        self.warm_up = warm_up
        self.window = window  # containers alive at once
        self.done = 0  # rounds made: each created one container and removed it again
        self.errors: list[BaseException] = []
        self._tag = secrets.token_hex(3)
        self._stop = threading.Event()
        self._warm = threading.Event()
        self._client = docker.from_env()
        self._thread = threading.Thread(target=self._loop, name="cdlibt-churn", daemon=True)

    def labels(self, n: int) -> dict:
        if n % 2:
            # as cdlib.testrun.container labels a suite's container: service and release, no color
            return {TEST_LABEL: "1", "cdlib.service": self.service, "cdlib.suite": "pre-integration",
                    "cdlib.release": f"r{n % 7}"}
        return {"cdlib.service": self.other, "cdlib.color": "blue" if n % 4 else "green",
                "cdlib.release": f"churn-{n}", "cdlib.index": "1"}

    def _loop(self) -> None:
        api = self._client.api
        alive: list[str] = []  # a few live at any time, each removed a few rounds after its creation
        try:
            for n in range(self.rounds):
                if self._stop.is_set():
                    break
                name = f"cdlibt-churn-{self._tag}-{n}"
                created = api.create_container(self.image, name=name, labels=self.labels(n))["Id"]
                if n % 3 == 0:
                    api.start(created)
                alive.append(created)
                if len(alive) > self.window:
                    api.remove_container(alive.pop(0), force=True, v=True)
                self.done = n + 1
                if self.done >= self.warm_up:
                    self._warm.set()
        except BaseException as exc:  # reported by __exit__
            self.errors.append(exc)
        finally:
            self._warm.set()

    def __enter__(self) -> Churn:
        self._thread.start()
        self._warm.wait(120)
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(120)
        try:
            self.cleanup()
        finally:
            self._client.close()
        if self._thread.is_alive():
            raise AssertionError("the churn thread did not end")
        if self.errors and exc_info[0] is None:
            raise AssertionError(f"the churn loop failed: {self.errors[0]!r}")

    def cleanup(self) -> None:
        for labels in ({"label": f"cdlib.service={self.other}"},
                       {"label": [TEST_LABEL, f"cdlib.service={self.service}"]}):
            for c in self._client.containers.list(all=True, filters=labels, sparse=True):
                try:
                    c.remove(force=True, v=True)
                except docker.errors.NotFound:
                    pass
