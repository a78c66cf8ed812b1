"""Load-test a running web demo (``tcl serve-demo``): N concurrent clients post segment requests at once.

Usage:
    .venv/bin/tcl serve-demo --checkpoint models/tcl/best.pt --port 7860 &
    python benchmarks/demo_load.py --url http://127.0.0.1:7860/ --clients 30 --rounds 1 --out demo_load.json

Each client opens its own connection per request (as separate browser tabs do), all start together
(a barrier), and each sends ``--rounds`` requests one after another. Printed, one line: requests,
200s, 503s (the server's "busy, retry later"), other HTTP statuses, connection errors (resets,
timeouts: what a well-behaved server never produces), and p50/p95 latency of the 200s and of all
answers. ``--out`` gets the same as JSON, with every request's status and seconds.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _payload(width: int, height: int, phrases: str) -> bytes:
    canvas = Image.fromarray((np.random.default_rng(0).random((height, width, 3)) * 60 + 100).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    draw.ellipse([width // 10, height // 6, width // 2, height * 2 // 3], fill=(220, 40, 40))
    draw.rectangle([width // 2, height // 4, width * 9 // 10, height * 5 // 6], fill=(40, 90, 220))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    image = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return json.dumps({"image": image, "phrases": phrases}).encode()


def _one(url: str, body: bytes, timeout: float) -> dict:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            status, retry_after = response.status, None
    except urllib.error.HTTPError as err:
        err.read()
        status, retry_after = err.code, err.headers.get("Retry-After")
    except (OSError, http.client.HTTPException) as err:  # reset, refused, timed out, or a broken response
        return {"status": None, "error": f"{type(err).__name__}: {err}", "seconds": time.perf_counter() - start}
    return {"status": status, "retry_after": retry_after, "seconds": time.perf_counter() - start}


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def run(url: str, clients: int, rounds: int, body: bytes, timeout: float) -> dict:
    endpoint = url.rstrip("/") + "/api/segment"
    results: list[dict] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client() -> None:
        barrier.wait()
        for _ in range(rounds):
            result = _one(endpoint, body, timeout)
            with lock:
                results.append(result)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    ok = [r["seconds"] for r in results if r["status"] == 200]
    answered = [r["seconds"] for r in results if r["status"] is not None]
    return {"url": url, "clients": clients, "rounds": rounds, "requests": len(results),
            "ok_200": len(ok), "busy_503": sum(r["status"] == 503 for r in results),
            "other_status": sum(r["status"] not in (None, 200, 503) for r in results),
            "errors": sum(r["status"] is None for r in results),
            "p50_200_s": _percentile(ok, 50), "p95_200_s": _percentile(ok, 95),
            "p50_all_s": _percentile(answered, 50), "p95_all_s": _percentile(answered, 95),
            "wall_s": round(wall, 3), "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860/", help="the demo's address")
    parser.add_argument("--clients", type=int, default=30, help="concurrent clients (30)")
    parser.add_argument("--rounds", type=int, default=1, help="requests per client, one after another (1)")
    parser.add_argument("--size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"), help="image size")
    parser.add_argument("--phrases", default="red disc, blue square")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request (120)")
    parser.add_argument("--out", type=Path, default=Path("demo_load.json"), help="JSON result file")
    args = parser.parse_args()
    if args.clients < 1 or args.rounds < 1:
        parser.error("--clients and --rounds must be >= 1")

    from tcl.atomic import write_json_atomic

    summary = run(args.url, args.clients, args.rounds, _payload(*args.size, args.phrases), args.timeout)
    write_json_atomic(args.out, summary)
    print(f"requests {summary['requests']}, 200: {summary['ok_200']}, 503: {summary['busy_503']}, "
          f"other: {summary['other_status']}, errors: {summary['errors']}, p50/p95 of 200s: "
          f"{summary['p50_200_s']}/{summary['p95_200_s']} s, p50/p95 of all answers: "
          f"{summary['p50_all_s']}/{summary['p95_all_s']} s, wall {summary['wall_s']} s -> {args.out}")


if __name__ == "__main__":
    main()
