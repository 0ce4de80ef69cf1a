"""`edvit-tool serve`: one Open Inference Protocol v2 endpoint for the whole deployed ensemble.

Flags only; the HTTP service lives in edvit_tool/serve/server.py.
"""

from __future__ import annotations

import json

import click

EPILOG = """\b
Examples:
  edvit-tool serve --deployment deployment.json --port 8000
  edvit-tool serve --deployment deployment.json --host 0.0.0.0 --port 8000 --token-file ~/.edvit/serve-token \\
      --tls-cert serve.crt --tls-key serve.key

\b
Then, from any machine that can reach it (stock Triton client):
  import tritonclient.http as th
  c = th.InferenceServerClient("HOST:8000")
  x = th.InferInput("pixel_values", [1, C, H, W], "FP32"); x.set_data_from_numpy(batch)
  c.infer("edvit", [x]).as_numpy("probabilities")
Health: /v2/health/live, /v2/health/ready (503 while no board is up). Metrics: /metrics.
A --host other than loopback needs --token-file (or --insecure). Without --tls-cert the endpoint is plain HTTP,
and so is the traffic to the boards unless deployment.json's endpoints are https:// (CA: --tls-ca or the
deployment's tls_ca).
SIGTERM / Ctrl-C: stop accepting, finish in-flight requests, exit 0.
"""


@click.command("serve", epilog=EPILOG, context_settings={"max_content_width": 110})
@click.option("--deployment", "deployment", required=True, type=click.Path(dir_okay=False),
              help="deployment.json written by `edvit-tool deploy`.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", required=True, type=click.IntRange(0, 65535), help="Port (0 = any free one, printed).")
@click.option("--token-file", type=click.Path(dir_okay=False),
              help="Require 'Authorization: Bearer <token>' with the token in this file (health routes exempt).")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without --token-file.")
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="PEM certificate: serve HTTPS (with --tls-key).")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="PEM private key of --tls-cert.")
@click.option("--tls-ca", type=click.Path(dir_okay=False),
              help="CA file to verify https:// boards against [default: deployment.json's tls_ca].")
@click.option("--deadline-ms", type=click.FloatRange(min=1), default=None,
              help="Per-request deadline [default: deployment.json's deadline_ms, else 2000].")
@click.option("--max-body-mb", default=64.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Request body limit for binary tensors (413 above it).")
@click.option("--max-json-mb", default=None, type=click.FloatRange(min=0.001),
              help="Request body limit for JSON tensors, which grow ~14x once parsed [default: a quarter of "
                   "--max-body-mb].")
@click.option("--max-connections", default=128, show_default=True, type=click.IntRange(min=1),
              help="Open connections served at once (503 above).")
@click.option("--max-inflight", default=4, show_default=True, type=click.IntRange(min=1),
              help="Requests being read, decoded or run at once (the rest wait, then 503).")
@click.option("--header-timeout-s", default=10.0, show_default=True, type=click.FloatRange(min=0.01),
              help="A request's line and headers must arrive within this many seconds.")
@click.option("--idle-timeout-s", default=15.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Close keep-alive connections idle this long.")
@click.option("--drain-s", default=10.0, show_default=True, type=click.FloatRange(min=0),
              help="On SIGTERM, wait this long for in-flight requests.")
@click.option("--json", "as_json", is_flag=True, help='Print the ready line as JSON ({"event": "ready", ...}).')
def command(deployment, host, port, token_file, insecure, tls_cert, tls_key, tls_ca, deadline_ms, max_body_mb,
            max_json_mb, max_connections, max_inflight, header_timeout_s, idle_timeout_s, drain_s, as_json):
    """Serve the deployed ensemble as one OIP v2 (KServe / Triton HTTP) endpoint."""
    from ..errors import EdvitError
    from ..runtime import httpd
    from ..serve import server
    from ..serve.coordinator import Coordinator, read_token

    if bool(tls_cert) != bool(tls_key):
        raise EdvitError("--tls-cert and --tls-key go together; give both (PEM files) or neither")
    server.check_exposure(host, token_file, insecure, tls=bool(tls_cert))
    token = read_token(token_file, "--token-file") if token_file else None
    tls = None
    if tls_cert:
        try:
            tls = httpd.tls_context(tls_cert, tls_key)
        except ValueError as e:
            raise EdvitError(f"--tls-cert/--tls-key: {e}; give a PEM certificate and its key") from None
    max_body = int(max_body_mb * (1 << 20))
    max_json = min(max_body, int(max_json_mb * (1 << 20)) if max_json_mb else max(1, max_body // 4))
    limits = httpd.Limits(max_body=max_body, max_json=max_json, max_connections=max_connections,
                          max_inflight=max_inflight, header_timeout_s=header_timeout_s, idle_timeout_s=idle_timeout_s)

    def ready(event):
        if as_json:
            click.echo(json.dumps(event))
        else:
            click.echo(f"serving {', '.join(event['models'])} ({len(coord.models)} sub-models on "
                       f"{len(coord.boards)} boards) on {event['url']}  — metrics at /metrics, Ctrl-C to stop")

    with Coordinator(deployment, deadline_ms=deadline_ms, tls_ca=tls_ca) as coord:
        return server.run(coord, host, port, token, limits, tls, drain_s, ready)
