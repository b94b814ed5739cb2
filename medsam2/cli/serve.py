"""`medsam2 serve`: the web app and REST API on this machine or a server."""

from __future__ import annotations

import signal
import socket
from pathlib import Path
from urllib.parse import quote

import typer

from medsam2.cli.errors import reports_input_errors
from medsam2.errors import InputError

MEGABYTE = 1 << 20


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound before the model loads so a taken port fails at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as error:
        raise InputError(f"--host {host} --port {port}: cannot listen there ({error.strerror or error})") from None


def page_url(host: str, port: int, token: str | None) -> str:
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}/" + (f"?token={quote(token)}" if token else "")


@reports_input_errors
def serve(
    data: Path | None = typer.Option(
        None,
        "--data",
        help="Folder of scans to offer, searched recursively (any format `medsam2 info` reads; a folder of DICOM "
        "files is one case). Masks are saved next to the scans. Default: the samples (a synthetic lesion in the MNI152 "
        "T1 brain, the MNI152 T1 and a CT slice).",
    ),
    samples: bool = typer.Option(False, "--samples", help="Offer the samples beside the --data scans too."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; beyond loopback a token is required."),
    port: int = typer.Option(8000, "--port", help="Port to listen on; 0 picks a free one."),
    token: str | None = typer.Option(
        None,
        "--token",
        envvar="MEDSAM2_TOKEN",
        help="Secret every request must carry (also read from $MEDSAM2_TOKEN); the printed URL includes it.",
    ),
    allow_unauthenticated: bool = typer.Option(
        False, "--allow-unauthenticated", help="Listen beyond loopback without a token (only on a trusted network)."
    ),
    upload_dir: Path | None = typer.Option(
        None, "--upload-dir", help="Keep uploaded scans here. Default: a temporary folder removed when the server stops."
    ),
    max_upload_mb: float = typer.Option(1024.0, "--max-upload-mb", help="Largest upload accepted, in MiB."),
    model: str = typer.Option("lite-medsam", "--model", help="lite-medsam (embedded), a preset or a checkpoint, as for `medsam2 segment`."),
    device: list[str] = typer.Option(
        ["cpu"], "--device", help="cpu, cuda or cuda:N. Repeat to spread sessions over several GPUs, one inference queue each."
    ),
    compiled: bool = typer.Option(
        False,
        "--compile",
        help="SAM 2.1 / MedSAM2 models: compile the per-frame memory step (and on a GPU the image encoder) with "
        "torch.compile, as CUDA graphs on a GPU, and warm it up before serving, which takes a minute or two at start. "
        "Propagation then runs about 7x faster on a GPU (eager 66 -> compiled 450-520 frames/s in bf16 on an H100, see README); "
        "not worth it on a CPU."
    ),
    max_sessions: int = typer.Option(16, "--max-sessions", help="Open sessions kept at once over all clients (idle ones close first)."),
    idle_minutes: float = typer.Option(60.0, "--idle-minutes", help="Close a session unused this long (its page then says so), freeing its memory."),
    annotate: Path | None = typer.Option(
        None, "--annotate", help="An annotation project (`medsam2 annotate init`) to serve too: its queue, cases and effort report, with a panel on the page."
    ),
) -> None:
    """Serve the web app and its REST API: open a scan in the browser, draw a box, propagate, export.

    The page is at the printed URL; the API is documented at /docs and /openapi.json on the same
    server. Without --token the server listens on this machine only; with one, every request must
    carry it (the printed URL sets it in the browser; scripts send 'Authorization: Bearer TOKEN').

    Example: medsam2 serve --data ../shared/data/ct_lesion   (then open http://127.0.0.1:8000/)
    """
    # Imported here so that the other commands start without loading the web stack.
    import uvicorn

    from medsam2.annotate.routes import annotation_router
    from medsam2.server import ServerSettings, create_app

    settings = ServerSettings(
        data_dir=data,
        with_samples=samples,
        upload_dir=upload_dir,
        token=token or None,
        host=host,
        port=port,
        allow_unauthenticated=allow_unauthenticated,
        model=model,
        devices=tuple(device),
        compiled=compiled,
        max_upload_bytes=int(max_upload_mb * MEGABYTE),
        max_sessions=max_sessions,
        session_idle_seconds=idle_minutes * 60,
    )
    app = create_app(settings, routers=[annotation_router(annotate, device[0])])
    listener = listen(host, port)
    try:
        typer.echo(f"loading {model} on {', '.join(device)}" + (" and compiling it" if compiled else "") + "...")
        app.state.server.inference.load()
        typer.echo(f"model: {app.state.server.inference.description}")
        app.state.server.catalog.list()  # builds the sample lesion (once per machine) before the page asks for it
        offered = "sample scans (pass --data FOLDER for your own)" if data is None else f"the scans in {data}" + (" and the samples" if samples else "")
        url = page_url(host, listener.getsockname()[1], settings.token)
        typer.echo(f"medsam2 is serving {offered}. Open {url} in a browser; Ctrl+C stops it.")
        uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[listener])
    except (KeyboardInterrupt, SystemExit) as stop:
        # Ctrl-C or SIGTERM is how a server ends, not a failure (a service manager counts status 0 as a
        # clean stop): uvicorn shuts down, then raises the signal again; before uvicorn runs, the
        # signal stops the start-up.
        if isinstance(stop, SystemExit) and stop.code != 128 + signal.SIGTERM:
            raise
        typer.echo("stopped serving")
    finally:
        listener.close()
