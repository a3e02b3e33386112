"""A stand-in for a vLLM server's /metrics, for docker-compose where no GPU serves a model.

    python mock_vllm.py --port 8000 --model llama-2-7b

Serves the counters and histograms vLLM exports (vllm:request_success_total,
vllm:prompt_tokens_total, vllm:generation_tokens_total, vllm:request_prompt_tokens,
vllm:request_generation_tokens, vllm:e2e_request_latency_seconds, and the running/waiting gauges),
growing at a steady made-up load, so `costflux bridge prometheus` has something to turn into usage
events. Standard library only: it runs on the plain python image.

The gauges follow Little's law: requests in flight = arrival rate x latency, of which at most
--max-num-seqs (vLLM's flag of that name: the running batch's size) run and the rest wait, so at
the default load (5 requests/s of 2.56 s) 8 run and 5 wait, as a saturated server's would.
"""

from __future__ import annotations

import argparse
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LATENCY_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOKEN_BUCKETS = (128, 512, 2048, 8192)


def _histogram(name: str, help_: str, labels: str, buckets: tuple[float, ...], value: float,
               count: int) -> list[str]:
    """Every observation equals ``value``: all buckets from its own upward hold ``count``."""
    lines = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
    for bound in buckets:
        lines.append(f'{name}_bucket{{{labels},le="{bound}"}} {count if value <= bound else 0}')
    lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {count}')
    lines.append(f"{name}_sum{{{labels}}} {value * count}")
    lines.append(f"{name}_count{{{labels}}} {count}")
    return lines


def render(model: str, elapsed_s: float, requests_per_s: float, prompt_tokens: int,
           generation_tokens: int, max_num_seqs: int = 8) -> str:
    """The exposition text after ``elapsed_s`` seconds of a steady load."""
    requests = int(elapsed_s * requests_per_s)
    labels = f'model_name="{model}"'
    latency = 0.02 * generation_tokens
    in_flight = round(requests_per_s * latency)
    running = min(in_flight, max_num_seqs)
    lines = [
        "# HELP vllm:num_requests_running Number of requests currently running on GPU.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{{{labels}}} {float(running)}",
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{{{labels}}} {float(in_flight - running)}",
        "# HELP vllm:request_success_total Count of successfully processed requests.",
        "# TYPE vllm:request_success_total counter",
        f'vllm:request_success_total{{finished_reason="stop",{labels}}} {requests}',
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
        "# TYPE vllm:prompt_tokens_total counter",
        f"vllm:prompt_tokens_total{{{labels}}} {requests * prompt_tokens}",
        "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
        "# TYPE vllm:generation_tokens_total counter",
        f"vllm:generation_tokens_total{{{labels}}} {requests * generation_tokens}",
    ]
    lines += _histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.",
                        labels, TOKEN_BUCKETS, prompt_tokens, requests)
    lines += _histogram("vllm:request_generation_tokens",
                        "Number of generation tokens processed.", labels, TOKEN_BUCKETS,
                        generation_tokens, requests)
    lines += _histogram("vllm:e2e_request_latency_seconds",
                        "Histogram of end to end request latency in seconds.", labels,
                        LATENCY_BUCKETS, latency, requests)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")  # noqa: S104 - a container listens on its IP
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default="llama-2-7b")
    parser.add_argument("--requests-per-second", type=float, default=5.0)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--generation-tokens", type=int, default=128)
    parser.add_argument("--max-num-seqs", type=int, default=8,
                        help="requests that run at once; the rest of those in flight wait")
    args = parser.parse_args(argv)
    started = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/metrics", "/health"):
                self.send_error(404)
                return
            body = b""
            if self.path.startswith("/metrics"):
                body = render(args.model, time.monotonic() - started, args.requests_per_second,
                              args.prompt_tokens, args.generation_tokens,
                              args.max_num_seqs).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # one line per scrape is noise

    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
