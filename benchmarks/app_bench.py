"""How quickly the app answers a user, measured from outside as a user meets it.

    python benchmarks/app_bench.py [--steps 50] [--runs 2] [--port 7871]

Starts `python app.py` (tiny preset, CPU) in a subprocess and prints:
  * seconds from launching the process until the page answers HTTP 200 (target < 15 s);
  * for each run of /generate through gradio_client on an example image: seconds from submitting to
    the first streamed step (target < 2 s), and to the final update with the downloads, i.e. a whole
    run including the streamed images (target < 25 s for 50 steps).
The first run also waits for the model if the background preload has not finished; later runs show
the steady state. The machine's load average is printed, since other work slows everything.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def wait_for_page(url: str, timeout: float = 120.0) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.perf_counter() - start
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--port", type=int, default=7871)
    parser.add_argument("--image", default=str(REPO / "assets" / "examples" / "mushroom" / "source.png"))
    args = parser.parse_args()

    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    url = f"http://127.0.0.1:{args.port}/"
    launched = time.perf_counter()
    server = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--port", str(args.port), "--preset", "tiny"],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_page(url)
        ready = time.perf_counter() - launched
        from gradio_client import Client, handle_file

        client = Client(url, verbose=False)
        rows = []
        for run in range(args.runs):
            start = time.perf_counter()
            job = client.submit(handle_file(args.image), "object", True, 0.45, "tiny", args.steps, 5.0, run,
                                "3D-synchronized (the paper)", 0, 100, api_name="/generate")
            first = None
            for update in job:
                if first is None and update[2] and "step 1/" in update[2]:
                    first = time.perf_counter() - start
            total = time.perf_counter() - start
            done = bool(update[2] and "Done" in update[2])
            sampling = re.search(r"Done\*\* in ([0-9.]+) s", update[2] or "")
            rows.append((run + 1, first, total, float(sampling.group(1)) if sampling else float("nan"), done))
    finally:
        server.terminate()
        server.wait(timeout=30)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f}; CPU used by this client: "
          f"{usage.ru_utime + usage.ru_stime:.1f} s")
    print(f"page ready after launch: {ready:.1f} s (target < 15 s)")
    print(f"| run | first step after click | whole {args.steps}-step run incl. streaming | of which sampling | finished |")
    print("|---:|---:|---:|---:|:---:|")
    for run, first, total, sampling, done in rows:
        print(f"| {run} | {first:.2f} s | {total:.1f} s | {sampling:.1f} s | {'yes' if done else 'NO'} |")
    return 0 if all(r[4] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
