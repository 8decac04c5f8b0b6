"""The run loop of ``python -m sesahand queue``: jobs over worker threads, one per server,
recorded in the manifest; resumes an earlier run of the same output folder."""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Collection, Sequence

from tqdm import tqdm

from ..io import atomic_write_bytes
from .client import ComfyClient, PromptRejected, TransportError, history_outcome, normalize_url, output_files
from .manifest import MANIFEST_NAME, Manifest
from .workflow import VARY_CHOICES, WorkflowError, prompt_digest, to_api_prompt, vary_prompt

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    """A job's state at the end of a run.

    ``status``: ``done``, ``failed`` or ``interrupted``; ``outputs``: downloaded files, relative
    to the output folder; ``attempts``: submissions in this run (0 for jobs done before).
    """

    index: int
    status: str
    server: str | None
    prompt_id: str | None
    attempts: int
    varied: dict[str, int]
    outputs: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class QueueReport:
    """What :func:`run_queue` did: one result per job (by index) and how many prompts the
    servers accepted into their queues in this run."""

    results: list[JobResult]
    submitted: int

    @property
    def ok(self) -> bool:
        """True when every job is done."""
        return all(r.status == "done" for r in self.results)


@dataclass
class _Job:
    index: int
    prompt: dict
    varied: dict[str, int]
    prompt_sha: str
    attempts: int = 0
    server: str | None = None
    prompt_id: str | None = None
    follow: bool = False  # already queued on ``server`` by an earlier run: wait, do not submit


class _Run:
    """Shared state of one :func:`run_queue` call (jobs, manifest, progress bar)."""

    def __init__(self, clients: dict[str, ComfyClient], manifest: Manifest, out: Path, retries: int, bar: tqdm):
        self.clients = clients
        self.manifest = manifest
        self.out = out
        self.retries = retries
        self.bar = bar
        self.cond = threading.Condition()
        self.pending: deque[_Job] = deque()
        self.follow: dict[str, deque[_Job]] = {url: deque() for url in clients}
        self.in_flight = 0
        self.results: dict[int, JobResult] = {}
        self.submitted = 0
        self.stop = threading.Event()
        self.status: dict[str, str] = {}
        self.last_error: dict[str, str] = {}
        self.crash: Exception | None = None

    def record(self, job: _Job, status: str, **fields) -> None:
        record = {"job": job.index, "status": status, "attempt": job.attempts, "server": job.server,
                  "prompt_id": job.prompt_id, "varied": job.varied, "prompt_sha": job.prompt_sha}
        record.update({k: v for k, v in fields.items() if v is not None})
        self.manifest.append(record)

    def finish(self, job: _Job, status: str, outputs: list[str] | None = None, error: str | None = None) -> None:
        self.record(job, status, outputs=outputs, error=error)
        with self.cond:
            self.results[job.index] = JobResult(job.index, status, job.server, job.prompt_id, job.attempts,
                                                job.varied, outputs or [], error)
            self.bar.update(1)
        if status == "done" and not outputs:
            log.warning("job %d done on %s but it produced no output files", job.index, job.server)
        elif status == "done":
            log.debug("job %d done on %s: %d files", job.index, job.server, len(outputs))
        else:
            log.error("job %d %s on %s: %s", job.index, status, job.server, error)

    def retry_or_fail(self, job: _Job, error: str) -> None:
        if job.attempts > self.retries:
            self.finish(job, "failed", error=f"{error} (after {job.attempts} attempts)")
            return
        log.warning("job %d, attempt %d on %s failed: %s; retrying", job.index, job.attempts, job.server, error)
        self.record(job, "retrying", error=error)
        with self.cond:
            self.pending.append(job)
            self.cond.notify_all()

    def take(self, url: str) -> _Job | None:
        """The next job for the worker of ``url``; None when no job is left for it."""
        with self.cond:
            while not self.stop.is_set():
                source = self.follow[url] or self.pending
                if source:
                    self.in_flight += 1
                    return source.popleft()
                if self.in_flight == 0 and not any(self.follow.values()):
                    return None
                self.cond.wait(0.5)
            return None

    def release(self) -> None:
        with self.cond:
            self.in_flight -= 1
            self.cond.notify_all()

    def download(self, client: ComfyClient, job: _Job, entry: dict) -> list[str]:
        """Fetch every saved file of ``entry`` into ``out/job_NNNNN/<subfolder>/<filename>``."""
        saved = []
        for item in output_files(entry):
            relative = PurePosixPath(item.get("subfolder") or "", item["filename"])
            if relative.is_absolute() or ".." in relative.parts:
                raise TransportError(f"{client.url}: refusing the output path {str(relative)!r}")
            path = Path(f"job_{job.index:05d}", *relative.parts)
            atomic_write_bytes(self.out / path, client.view(item))
            saved.append(path.as_posix())
        return saved

    def show_progress(self, url: str, text: str) -> None:
        with self.cond:
            self.status[url] = text
            self.bar.set_postfix_str(" | ".join(f"{u.split('://')[-1]} {t}" for u, t in self.status.items()),
                                     refresh=False)

    def process(self, client: ComfyClient, job: _Job) -> None:
        """Run one job on ``client``'s server to its next state."""
        if job.follow:
            job.follow = False
        else:
            job.attempts += 1
            job.server, job.prompt_id = client.url, str(uuid.uuid4())
            self.record(job, "submitted")
            try:
                client.submit(job.prompt, job.prompt_id)
            except PromptRejected as exc:
                self.finish(job, "failed", error=f"rejected by the server (validation failed): {exc}")
                return
            with self.cond:
                self.submitted += 1
        self.show_progress(client.url, f"job {job.index}")

        def on_progress(node, value, maximum):
            step = f" {value}/{maximum}" if value is not None else ""
            self.show_progress(client.url, f"job {job.index} node {node}{step}")

        entry = client.wait(job.prompt_id, on_progress)
        outcome, error = history_outcome(entry)
        if outcome == "success":
            self.finish(job, "done", outputs=self.download(client, job, entry))
        elif outcome == "interrupted":
            self.finish(job, "interrupted", error=error)
        else:
            self.retry_or_fail(job, error)

    def work(self, url: str) -> None:
        """Worker thread of one server: process jobs until none is left or the server is gone.
        An unexpected exception stops the whole run; :func:`run_queue` raises it again."""
        client = self.clients[url]
        while (job := self.take(url)) is not None:
            try:
                self.process(client, job)
            except TransportError as exc:
                self.last_error[url] = str(exc)
                self.retry_or_fail(job, str(exc))
                if exc.unreachable:
                    log.error("%s is unreachable; it gets no more jobs in this run", url)
                    with self.cond:
                        self.pending.extend(self.follow.pop(url))
                        self.in_flight -= 1
                        self.cond.notify_all()
                    return
            except Exception as exc:  # a bug or a local error (disk full): stop everything
                if not self.stop.is_set():
                    self.crash = exc
                    self.stop.set()
            self.release()

    def resume(self, job: _Job, record: dict, factory: Callable[[str], ComfyClient]) -> None:
        """A job the manifest says was submitted: collect it, follow it, or queue it again."""
        url, prompt_id = record.get("server"), record.get("prompt_id")
        if not url or not prompt_id:
            self.pending.append(job)
            return
        client = self.clients.get(url) or factory(url)
        try:
            entry = client.history(prompt_id)
            if entry is not None:
                job.server, job.prompt_id = url, prompt_id
                outcome, error = history_outcome(entry)
                if outcome == "success":
                    self.finish(job, "done", outputs=self.download(client, job, entry))
                    return
                log.info("job %d: its earlier prompt ended (%s); submitting it again", job.index, error)
            elif prompt_id in client.queued():
                if url in self.clients:
                    job.server, job.prompt_id, job.follow = url, prompt_id, True
                    self.follow[url].append(job)
                    return
                log.warning("job %d is still queued on %s, which is not among --server; submitting "
                            "it again", job.index, url)
        except TransportError as exc:
            log.warning("job %d: cannot check its earlier prompt on %s (%s); submitting it again",
                        job.index, url, exc)
        finally:
            if url not in self.clients:
                client.close()
        self.pending.append(job)


def run_queue(servers: Sequence[str], workflow: dict, *, count: int, out: str | Path, seed: int = 0,
              vary: Collection[str] = ("seed",), retries: int = 2,
              client_factory: Callable[[str], ComfyClient] | None = None) -> QueueReport:
    """Run ``count`` jobs of ``workflow`` on the ComfyUI ``servers`` (see the module docstring).

    Args:
        servers: base URLs of running ComfyUI servers (duplicates are merged).
        workflow: a UI workflow or API prompt (parsed JSON); a UI workflow is converted with the
            ``/object_info`` of the first server that answers.
        count: number of jobs (indices ``0..count-1``).
        out: output folder: ``manifest.jsonl`` and ``job_NNNNN/`` with each job's files.
        seed, vary: see :func:`vary_prompt`.
        retries: extra attempts of a job after an execution or transport error (not after a
            rejection or an interrupt).
        client_factory: builds the client of a URL; default :class:`ComfyClient`.
    Returns:
        A :class:`QueueReport`. Jobs done in an earlier run with the same prompts are not run
        again; jobs left ``submitted`` are looked up on their server (history, then queue) first.
    Raises:
        ValueError / :class:`WorkflowError`: bad arguments, a workflow that cannot be converted,
        or an output folder whose manifest holds other prompts for the same job indices.
        :class:`TransportError`: a UI workflow and no server answers ``/object_info``.
    """
    if count < 1:
        raise ValueError(f"--count {count}: must be at least 1")
    if retries < 0:
        raise ValueError(f"--retries {retries}: must be 0 or more")
    unknown = set(vary) - set(VARY_CHOICES)
    if unknown:
        raise ValueError(f"--vary {','.join(sorted(unknown))}: choose from {', '.join(VARY_CHOICES)}")
    urls = list(dict.fromkeys(normalize_url(u) for u in servers))
    if not urls:
        raise ValueError("no --server given")
    out = Path(out)
    client_factory = client_factory or ComfyClient
    clients = {url: client_factory(url) for url in urls}
    try:
        prompt = to_api_prompt(workflow, lambda: _first_object_info(clients))
        jobs = []
        for index in range(count):
            job_prompt, varied = vary_prompt(prompt, index, seed, vary)
            jobs.append(_Job(index, job_prompt, varied, prompt_digest(job_prompt)))
        manifest = Manifest(out / MANIFEST_NAME)
        latest = manifest.latest()
        for job in jobs:
            record = latest.get(job.index)
            if record is not None and record.get("prompt_sha") != job.prompt_sha:
                raise WorkflowError(
                    f"{manifest.path} records job {job.index} with a different prompt (another "
                    "workflow, --seed or --vary): use a new --out folder for this run")
        with tqdm(total=count, unit="job", desc="queue", dynamic_ncols=True) as bar:
            run = _Run(clients, manifest, out, retries, bar)
            for job in jobs:
                record = latest.get(job.index)
                if record is None or record["status"] in ("retrying", "failed", "interrupted"):
                    run.pending.append(job)
                elif record["status"] == "done":
                    run.results[job.index] = JobResult(job.index, "done", record.get("server"),
                                                       record.get("prompt_id"), 0, job.varied,
                                                       record.get("outputs") or [])
                    bar.update(1)
                else:
                    run.resume(job, record, client_factory)
            log.info("%d jobs: %d done before, %d to run on %d server(s)", count, len(run.results),
                     count - len(run.results), len(urls))
            threads = [threading.Thread(target=run.work, args=(url,), name=f"queue {url}", daemon=True)
                       for url in urls]
            for thread in threads:
                thread.start()
            try:
                while any(thread.is_alive() for thread in threads):
                    for thread in threads:
                        thread.join(0.2)
            finally:
                run.stop.set()
            if run.crash is not None:
                raise run.crash
            for job in list(run.pending) + [j for q in run.follow.values() for j in q]:
                reasons = "; ".join(run.last_error.values()) or "no server left"
                run.finish(job, "failed", error=f"no reachable server ({reasons})")
    finally:
        for client in clients.values():
            client.close()
    results = [run.results[i] for i in range(count)]
    return QueueReport(results, run.submitted)


def _first_object_info(clients: dict[str, ComfyClient]) -> dict:
    errors = []
    for client in clients.values():
        try:
            return client.object_info()
        except TransportError as exc:
            errors.append(str(exc))
    raise TransportError("cannot convert the UI workflow: no server answered /object_info ("
                         + "; ".join(errors) + ")")


def format_summary(report: QueueReport, width: int = 160) -> str:
    """A plain-text table: jobs per server and status, then each job not done with its error
    (cut to ``width`` characters; the manifest has the whole message)."""
    statuses = ("done", "failed", "interrupted")
    servers = sorted({r.server or "-" for r in report.results})
    counts = {(s, st): 0 for s in servers for st in statuses}
    for r in report.results:
        counts[(r.server or "-", r.status)] += 1
    name_w = max(len("server"), *(len(s) for s in servers))
    lines = [f"{'server':<{name_w}}  " + "  ".join(f"{st:>11}" for st in statuses)]
    for s in servers:
        lines.append(f"{s:<{name_w}}  " + "  ".join(f"{counts[(s, st)]:>11}" for st in statuses))
    bad = [r for r in report.results if r.status != "done"]
    lines.append(f"{len(report.results)} jobs: {len(report.results) - len(bad)} done, "
                 f"{sum(r.status == 'failed' for r in bad)} failed, "
                 f"{sum(r.status == 'interrupted' for r in bad)} interrupted; "
                 f"{report.submitted} prompts queued on the servers in this run")
    empty = [r.index for r in report.results if r.status == "done" and not r.outputs]
    if empty:
        shown = ", ".join(map(str, empty[:20])) + (", ..." if len(empty) > 20 else "")
        lines.append(f"{len(empty)} done job(s) produced no output files (the workflow saves nothing, "
                     f"or only previews): job(s) {shown}")
    if bad:
        lines.append(f"{'job':>5}  {'status':<11}  {'tries':>5}  error")
        for r in bad:
            lines.append(f"{r.index:>5}  {r.status:<11}  {r.attempts:>5}  {(r.error or '')[:width]}")
    return "\n".join(lines)
