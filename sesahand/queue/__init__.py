"""Batch queueing on running ComfyUI servers: ``python -m sesahand queue``.

ComfyUI stays the engine; this package only prepares and distributes prompts:

1. **Workflow**: an API-format prompt is used as is; a UI workflow (what the browser saves)
   is converted the way the frontend's ``graphToPrompt`` does it, using the server's
   ``/object_info`` (see :func:`ui_to_api`).
2. **Jobs**: job ``i`` (0-based) is the prompt with the values of ``vary`` changed (see
   :func:`vary_prompt`); the same command always gives the same prompts.
3. **Servers**: one worker thread per server URL takes the next job, posts it to ``/prompt``
   (with its own ``prompt_id``), follows the websocket ``/ws`` for progress and the end,
   reads the result from ``/history/{prompt_id}`` and downloads the saved files through
   ``/view`` into ``out/job_NNNNN/``. Each server runs one job of the batch at a time.
4. **Manifest**: every state change of a job is one JSON line appended to
   ``out/manifest.jsonl`` (:class:`Manifest`), so a stopped run resumes without duplicates.
5. **Failures**: a prompt the server rejects (HTTP 400: validation, e.g. a missing model file
   or a bad widget value) fails at once with the node's message. So does a prompt accepted
   with HTTP 200 but with ``node_errors`` (ComfyUI then runs only the outputs that passed
   validation): it is taken off the server's queue (or interrupted) and fails with the
   nodes' messages. A job is done only when ``/history`` reports ``status_str`` ``success``
   and ``completed``. Execution errors and
   transport errors are retried up to ``retries`` more times, on any server; a job stopped by
   ``POST /interrupt`` ends as ``interrupted`` (not retried in this run) and the server goes on
   with the next job. A server that cannot be reached gets no more jobs in this run.

Modules: :mod:`.workflow` (workflow files, UI -> API conversion, job prompts),
:mod:`.manifest` (the job log), :mod:`.client` (one server: HTTP and websocket),
:mod:`.run` (the run loop and its summary), :mod:`.commands` (the CLI command). The frontend's
widget rules they rely on are in :mod:`sesahand.comfy_graph`. Nothing here imports ComfyUI;
HTTP is ``requests``, the websocket ``websocket-client``.
"""

from ..comfy_graph import MODE_BYPASS, MODE_MUTED, SEED_INPUTS, VIRTUAL_NODES, WIDGET_TYPES
from .client import (DEFAULT_SERVER, ComfyClient, PromptRejected, TransportError, format_rejection,
                     history_outcome, normalize_url, output_files)
from .manifest import MANIFEST_NAME, Manifest
from .run import JobResult, QueueReport, format_summary, run_queue
from .workflow import (POSE_NODE, VARY_CHOICES, UiGraph, WorkflowError, is_api_prompt, load_workflow,
                       prompt_digest, to_api_prompt, ui_to_api, vary_prompt)

__all__ = [
    "DEFAULT_SERVER", "MANIFEST_NAME", "MODE_BYPASS", "MODE_MUTED", "POSE_NODE", "SEED_INPUTS", "VARY_CHOICES",
    "VIRTUAL_NODES", "WIDGET_TYPES", "ComfyClient", "JobResult", "Manifest", "PromptRejected", "QueueReport",
    "TransportError", "UiGraph", "WorkflowError", "format_rejection", "format_summary", "history_outcome",
    "is_api_prompt", "load_workflow", "normalize_url", "output_files", "prompt_digest", "run_queue",
    "to_api_prompt", "ui_to_api", "vary_prompt",
]
