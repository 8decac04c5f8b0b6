"""One ComfyUI server over HTTP and its websocket, and how to read its replies."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Callable, Iterator

import requests
import websocket

from ..comfy_graph import node_sort_key

log = logging.getLogger(__name__)

DEFAULT_SERVER = "http://127.0.0.1:8188"


class PromptRejected(Exception):
    """The server refused a prompt (HTTP 400: validation failed), or accepted it with
    ``node_errors`` (some outputs failed validation); the message is :func:`format_rejection`'s.
    Never retried."""


class TransportError(RuntimeError):
    """A request to a server failed (connection, timeout, unexpected reply).

    ``unreachable`` is True when the connection failed (refused, reset, unknown host): that
    server gets no more jobs in the run.
    """

    def __init__(self, message: str, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable


def normalize_url(url: str) -> str:
    """``http[s]://host:port`` without a trailing slash; ``host:port`` gets ``http://``."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--server {url!r}: expected an http:// or https:// URL, e.g. {DEFAULT_SERVER}")
    return url


def format_rejection(body: dict) -> str:
    """One line per node error of a ``POST /prompt`` reply's ``node_errors`` (HTTP 400, or
    HTTP 200 with some outputs invalid): ``node 3 (SesaHandRenderConditions): <message>: <details>``."""
    parts = []
    for node_id, entry in sorted((body.get("node_errors") or {}).items(), key=lambda kv: node_sort_key(kv[0])):
        for error in entry.get("errors") or []:
            details = error.get("details")
            parts.append(f"node {node_id} ({entry.get('class_type')}): {error.get('message')}"
                         + (f": {details}" if details else ""))
    if not parts:
        error = body.get("error")
        if isinstance(error, dict):
            parts.append(error.get("message", "rejected") + (f": {error['details']}" if error.get("details") else ""))
        else:
            parts.append(str(error or body))
    return "; ".join(parts)


def history_outcome(entry: dict) -> tuple[str, str | None]:
    """``("success" | "interrupted" | "error", message)`` of a ``/history`` entry.

    Success needs the entry's ``status`` to say so (``status_str == "success"`` and
    ``completed``); an entry without a status, or with any other, is an error."""
    status = entry.get("status")
    if not isinstance(status, dict):
        return "error", "the server's history has no status for this prompt"
    for message in status.get("messages") or []:
        if not (isinstance(message, (list, tuple)) and len(message) == 2 and isinstance(message[1], dict)):
            continue
        event, data = message
        if event == "execution_interrupted":
            return "interrupted", f"interrupted in node {data.get('node_id')} ({data.get('node_type')})"
        if event == "execution_error":
            return "error", (f"node {data.get('node_id')} ({data.get('node_type')}): "
                             f"{data.get('exception_type')}: {str(data.get('exception_message')).strip()}")
    if status.get("status_str") == "success" and status.get("completed") is True:
        return "success", None
    return "error", (f"the server reports status {status.get('status_str')!r} (completed: "
                     f"{status.get('completed')!r}) without a message")


def output_files(entry: dict) -> Iterator[dict]:
    """The saved files (``{"filename", "subfolder", "type": "output"}``) listed in a
    ``/history`` entry's outputs, node by node; temporary previews are skipped."""
    for node_id in sorted(entry.get("outputs") or {}, key=node_sort_key):
        for items in entry["outputs"][node_id].values():
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and "filename" in item and item.get("type", "output") == "output":
                    yield item


class ComfyClient:
    """One ComfyUI server over HTTP (``requests``) and its websocket (``websocket-client``).

    Args:
        url: the server's base URL (see :func:`normalize_url`).
        timeout: seconds to wait for an HTTP reply.
        poll_s: seconds of websocket silence after which :meth:`wait` asks ``/history`` again
            (also its polling period when the websocket cannot be opened).
    All methods raise :class:`TransportError` when the server cannot be reached or answers
    unexpectedly.
    """

    def __init__(self, url: str, timeout: float = 60.0, poll_s: float = 5.0):
        self.url = normalize_url(url)
        self.timeout = timeout
        self.poll_s = poll_s
        self.client_id = uuid.uuid4().hex
        self._session = requests.Session()
        self._ws: websocket.WebSocket | None = None

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        try:
            return self._session.request(method, self.url + path, timeout=(10, self.timeout), **kwargs)
        except requests.ConnectionError as exc:
            raise TransportError(f"{self.url}: cannot connect ({exc})", unreachable=True) from None
        except requests.RequestException as exc:
            raise TransportError(f"{self.url}{path}: {exc}") from None

    def _json(self, method: str, path: str, **kwargs):
        reply = self._request(method, path, **kwargs)
        if reply.status_code != 200:
            raise TransportError(f"{self.url}{path}: HTTP {reply.status_code}: {reply.text[:300]}")
        try:
            return reply.json()
        except ValueError:
            raise TransportError(f"{self.url}{path}: the reply is not JSON") from None

    def object_info(self) -> dict:
        """``GET /object_info``: every node type's inputs and outputs."""
        return self._json("GET", "/object_info")

    def submit(self, prompt: dict, prompt_id: str) -> None:
        """``POST /prompt`` with our ``prompt_id`` and client id (the websocket is opened first:
        the server sends a prompt's events only to a socket open while it runs).
        Raises :class:`PromptRejected` on HTTP 400 (validation failed), and on HTTP 200 with
        ``node_errors`` (some outputs failed validation; ComfyUI queued the rest), after taking
        the prompt off the queue (or interrupting it if it already runs)."""
        self._connect_ws()
        reply = self._request("POST", "/prompt",
                              json={"prompt": prompt, "client_id": self.client_id, "prompt_id": prompt_id})
        if reply.status_code == 400:
            try:
                body = reply.json()
            except ValueError:
                body = {"error": reply.text[:300]}
            raise PromptRejected(format_rejection(body))
        if reply.status_code != 200:
            raise TransportError(f"{self.url}/prompt: HTTP {reply.status_code}: {reply.text[:300]}")
        try:
            body = reply.json()
        except ValueError:
            raise TransportError(f"{self.url}/prompt: the reply is not JSON") from None
        if isinstance(body, dict) and body.get("node_errors"):
            self.cancel(prompt_id)
            raise PromptRejected(format_rejection(body))

    def cancel(self, prompt_id: str) -> None:
        """Take ``prompt_id`` off the queue, or interrupt it if it runs (best effort: a failure
        is only logged)."""
        try:
            self._request("POST", "/queue", json={"delete": [prompt_id]})
            self._request("POST", "/interrupt", json={"prompt_id": prompt_id})
        except TransportError as exc:
            log.warning("%s: could not cancel prompt %s (%s)", self.url, prompt_id, exc)

    def history(self, prompt_id: str) -> dict | None:
        """``GET /history/{prompt_id}``: the finished prompt's entry, None while it is not finished."""
        return self._json("GET", f"/history/{prompt_id}").get(prompt_id)

    def queued(self) -> set[str]:
        """Prompt ids running or pending (``GET /queue``)."""
        queue = self._json("GET", "/queue")
        return {item[1] for item in (queue.get("queue_running") or []) + (queue.get("queue_pending") or [])}

    def view(self, item: dict) -> bytes:
        """The bytes of an output file (``GET /view``), ``item`` as listed by the history."""
        params = {"filename": item["filename"], "subfolder": item.get("subfolder", ""),
                  "type": item.get("type", "output")}
        reply = self._request("GET", "/view", params=params)
        if reply.status_code != 200:
            raise TransportError(f"{self.url}/view {params}: HTTP {reply.status_code}")
        return reply.content

    def wait(self, prompt_id: str,
             on_progress: Callable[[str | None, int | None, int | None], None] | None = None) -> dict:
        """Block until ``prompt_id`` has finished; returns its ``/history`` entry.

        Follows the websocket (``executing``/``progress`` events go to ``on_progress(node, value,
        max)``; ``executing`` with node None ends the prompt) and asks ``/history`` at the start,
        at the end event and after ``poll_s`` silent seconds, so lost events only cost time.
        A prompt neither queued nor in the history (the server restarted) raises
        :class:`TransportError`.
        """
        while True:
            entry = self.history(prompt_id)
            if entry is not None:
                return entry
            if prompt_id not in self.queued():
                entry = self.history(prompt_id)  # it may have finished between the two requests
                if entry is not None:
                    return entry
                raise TransportError(f"{self.url}: prompt {prompt_id} is neither queued nor in the "
                                     "history (was the server restarted?)")
            self._follow_events(prompt_id, on_progress)

    def _connect_ws(self) -> websocket.WebSocket | None:
        if self._ws is None:
            ws_url = "ws" + self.url[len("http"):] + f"/ws?clientId={self.client_id}"
            try:
                self._ws = websocket.create_connection(ws_url, timeout=self.poll_s)
            except (websocket.WebSocketException, OSError) as exc:
                log.debug("%s: no websocket (%s); polling /history instead", self.url, exc)
        return self._ws

    def _follow_events(self, prompt_id: str, on_progress) -> None:
        ws = self._connect_ws()
        if ws is None:
            time.sleep(self.poll_s)
            return
        while True:
            try:
                message = ws.recv()
            except websocket.WebSocketTimeoutException:
                return
            except (websocket.WebSocketException, OSError):
                self._close_ws()
                return
            if not isinstance(message, str):
                continue  # binary preview images
            try:
                event = json.loads(message)
            except ValueError:
                continue
            data = event.get("data") if isinstance(event, dict) else None
            if not isinstance(data, dict) or data.get("prompt_id") != prompt_id:
                continue
            if event.get("type") == "executing" and data.get("node") is None:
                return
            if on_progress is not None and event.get("type") in ("executing", "progress"):
                on_progress(data.get("node"), data.get("value"), data.get("max"))

    def _close_ws(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except (websocket.WebSocketException, OSError):
                pass
            self._ws = None

    def close(self) -> None:
        """Close the websocket and the HTTP session."""
        self._close_ws()
        self._session.close()
