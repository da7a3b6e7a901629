"""What a run pays per clip on the driver as manifests grow, and what a re-run reads.

    python benchmarks/scale.py [--clips 100 1000] [--out benchmarks/results/scale.md]

For each N: N MovingShapes clips in a bucket of an S3 server on 127.0.0.1 (moto, in
its own process, behind a WSGI counter of the bytes it serves), `motioncrafter run`
(a subprocess, exactly as a user runs it) at the minimal budget (1 tuning step, the
clip's own prompt only, 1 seed, 2 denoising steps), then the same command with the
same run id again. Reported per N, side by side in one run:
- bytes of video (.mp4 objects) read from the clip bucket by the first run and by the
  re-run (goal for the re-run: 0);
- driver-side seconds per clip outside tuning / rendering / scoring: the run's wall
  time minus the time spent inside `tune_clip`, the render actors and the metric
  actors (so Ray start-up, decoding, leasing, commits, planning and tables are all
  in it), and the same split into the fixed and the per-clip part from the two sizes
  (goal: ratio 1,000 / 100 <= 1.2);
- the driver process's peak resident memory (VmHWM), and its growth per clip.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLIP_BUCKET, RUN_BUCKET = "scale-clips", "scale-runs"
BUDGET = ["tune.steps=1", "tune.log_every=1", "render.num_steps=2", "render.seeds=[0]", "pipeline.lease_seconds=120"]


# ------------------------------------------------------------ the S3 server, in its own process

def serve(port_file: str) -> None:
    """moto's S3 server with a counter of the .mp4 bytes it sends from the clip bucket
    (GET /__counts reads it, GET /__reset zeroes it)."""
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    counts = {"bytes": 0, "gets": 0}
    lock = threading.Lock()

    def counting(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path in ("/__counts", "/__reset"):
            with lock:
                body = json.dumps(counts).encode()
                if path == "/__reset":
                    counts.update(bytes=0, gets=0)
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        out = app(environ, start_response)
        if environ["REQUEST_METHOD"] != "GET" or not (path.startswith(f"/{CLIP_BUCKET}/") and path.endswith(".mp4")):
            return out

        def counted():
            for chunk in out:
                with lock:
                    counts["bytes"] += len(chunk)
                yield chunk
            with lock:
                counts["gets"] += 1
        return counted()

    server = make_server("127.0.0.1", 0, counting, threaded=True)
    Path(port_file).write_text(str(server.server_port))
    server.serve_forever()


def _get(endpoint: str, path: str) -> dict:
    with urllib.request.urlopen(endpoint + path) as r:
        return json.loads(r.read())


# ---------------------------------------------------------------------------------- one size

def _driver(cmd: list[str], env: dict) -> tuple[int, float, str]:
    """Run the CLI; (exit code, peak RSS of that process in MB from /proc VmHWM, stderr tail)."""
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0.0

    def watch() -> None:
        nonlocal peak
        while proc.poll() is None:
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) / 1024)
            except OSError:
                return
            time.sleep(0.25)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, err = proc.communicate()
    watcher.join()
    return proc.returncode, peak, err[-3000:]


def _compute_seconds(info: dict) -> float:
    """Seconds inside tune_clip, the render actors and the metric actors (what this run did, not what it kept)."""
    re_ = info["stages"]["render_evaluate"]
    return info["stages"]["train"]["tune_seconds"] + re_["render_seconds"] + re_["eval_seconds"]


def measure(n: int, endpoint: str, env: dict, work: Path) -> dict:
    from motioncrafter import storage
    from motioncrafter.toyworld.world import HELD_OUT_MOTIONS, sample_specs, write_clips

    local = work / f"clips-{n}"
    listing = write_clips(sample_specs(n, seed=n, motions=HELD_OUT_MOTIONS), local)
    rows = [json.loads(line) for line in listing.read_text().splitlines()]
    uploads = {f"s3://{CLIP_BUCKET}/{n}/{r['video_uri']}": (local / r["video_uri"]).read_bytes() for r in rows}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: storage.write_bytes(*kv), uploads.items()))
    manifest = "".join(json.dumps({"motion_id": f"m{i:06d}", "video_uri": uri, "prompt": r["prompt"]}) + "\n"
                       for i, (uri, r) in enumerate(zip(uploads, rows)))
    manifest_uri = f"s3://{CLIP_BUCKET}/manifest-{n}.jsonl"
    storage.write_bytes(manifest_uri, manifest.encode())
    video_bytes = sum(len(b) for b in uploads.values())

    run_id = f"scale-{n}"
    cmd = ["nice", "-n", "5", sys.executable, "-m", "motioncrafter_cli", "run", "--manifest", manifest_uri,
           "--output", f"s3://{RUN_BUCKET}/runs", "--run-id", run_id, "-q", *[a for o in BUDGET for a in ("--set", o)]]
    out = {"clips": n, "video_bytes": video_bytes}
    for attempt in ("first", "rerun"):
        _get(endpoint, "/__reset")
        started, load = time.time(), os.getloadavg()[0]
        code, peak, err = _driver(cmd, env)
        wall, load = time.time() - started, (load + os.getloadavg()[0]) / 2
        if code != 0:
            raise SystemExit(f"{attempt} run of {n} clips failed ({code}):\n{err}")
        counts = _get(endpoint, "/__counts")
        run_uri = f"s3://{RUN_BUCKET}/runs/{run_id}"
        info = json.loads(storage.read_bytes(f"{run_uri}/run.json"))
        compute = _compute_seconds(info)
        out[attempt] = {"wall_s": wall, "load": load, "run_s": info["seconds"], "compute_s": compute, "overhead_s": wall - compute,
                        "peak_mb": peak, "video_bytes_read": counts["bytes"], "video_gets": counts["gets"],
                        "summary": info["counts"]["summary"], "failures": info["counts"]["failures"],
                        "indexed": info["stages"]["ingest"]["indexed"], "decoded": info["stages"]["ingest"]["decoded"],
                        "trained": info["stages"]["train"]["trained"], "kept": info["stages"]["render_evaluate"]["kept"],
                        "driver": info.get("driver", {}), "stages": info["stages"]}
        print(f"{n} clips, {attempt}: {json.dumps(out[attempt])}", flush=True)
    return out


# ------------------------------------------------------------------------------------ report

def table(results: list[dict], command: str) -> str:
    lines = [
        "# Scale: driver cost per clip and what a re-run reads",
        "",
        f"Command: `{command}` (one run, sizes side by side; S3 = moto on 127.0.0.1, the driver is "
        "`motioncrafter run` in its own process; budget: " + ", ".join(BUDGET) + "; one eval prompt per clip).",
        "",
        "The machine's 2 cores are shared with other work; `load avg` is the 1-minute load average around each run.",
        "",
        "| clips | run | wall s | tune+render+score s | outside them s | per clip s | video bytes read | GETs of videos | indexed | decoded | trained | scores kept | driver peak MB | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for attempt in ("first", "rerun"):
            a = r[attempt]
            lines.append(f"| {r['clips']} | {attempt} | {a['wall_s']:.1f} | {a['compute_s']:.1f} | {a['overhead_s']:.1f} | "
                         f"{a['overhead_s'] / r['clips']:.3f} | {a['video_bytes_read']:,} of {r['video_bytes']:,} | {a['video_gets']} | "
                         f"{a['indexed']} | {a['decoded']} | {a['trained']} | {a['kept']} | {a['peak_mb']:.0f} | {a['load']:.1f} |")
    if len(results) >= 2:
        small, large = results[0], results[-1]
        ns, nl = small["clips"], large["clips"]
        lines += ["", f"## {nl} vs {ns} clips", ""]
        for attempt in ("first", "rerun"):
            ps, pl = small[attempt]["overhead_s"] / ns, large[attempt]["overhead_s"] / nl
            slope = (large[attempt]["overhead_s"] - small[attempt]["overhead_s"]) / (nl - ns)
            fixed = small[attempt]["overhead_s"] - slope * ns
            lines.append(f"- {attempt} run: seconds per clip outside tuning/rendering/scoring {ps:.3f} at {ns}, {pl:.3f} at {nl}: "
                         f"ratio {pl / ps:.2f} (goal <= 1.2); as a line: {fixed:.1f} s fixed + {slope:.3f} s per clip")
        mem = (large["first"]["peak_mb"] - small["first"]["peak_mb"]) / (nl - ns)
        base = large["first"]["peak_mb"] - mem * nl
        lines.append(f"- driver peak memory: {small['first']['peak_mb']:.0f} MB at {ns}, {large['first']['peak_mb']:.0f} MB at {nl}: "
                     f"{mem * 1024:.1f} KB per clip over {base:.0f} MB; 100,000 clips: {base:.0f} + 100,000 x {mem * 1024:.1f} KB "
                     f"= {base + mem * 100_000:.0f} MB")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/scale.md"))
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # internal: run the S3 server, write its port here
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    work = Path(tempfile.mkdtemp(prefix="mc-scale-"))
    port_file = work / "port"
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.1)
        endpoint = f"http://127.0.0.1:{port_file.read_text()}"
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true", "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
        os.environ.update(env)
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoint)
        for bucket in (CLIP_BUCKET, RUN_BUCKET):
            s3.create_bucket(Bucket=bucket)
        results = [measure(n, endpoint, env, work) for n in args.clips]
    finally:
        server.terminate()
        server.wait()
    command = "python benchmarks/scale.py --clips " + " ".join(map(str, args.clips))
    text = table(results, command)
    print(text)
    Path(args.out).write_text(text)
    Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
