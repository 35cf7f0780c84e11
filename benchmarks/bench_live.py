"""Live training in the app against the same fine-tune from the CLI, in one run.

    python benchmarks/bench_live.py [--repeats 3] [--steps 40] [--watchers 2]

Starts the app (`streamlit run app/main.py`, headless, a temporary run cache), drives
Debian's Chromium through Playwright, and times, interleaved and repeated:

* cli:    `python -m minituner finetune` of the default LoRA config (r=8, alpha=16, q,v,
          40 steps), the whole command: interpreter start, imports, training, the final
          evaluation and the save;
* app+0:  the Train page, from pressing the train button to "Training finished" (the
          child process starts, trains, evaluates and saves), no other tab open;
* app+N after:  the same with N more browsers (each its own profile: nothing cached)
          opened on the Train page right after the press (each loads the app while the
          run goes), watching it to its end;
* app+N after, same browser: the same with N more tabs of the pressing tab's browser
          (they share its HTTP and script caches: a lecturer opening more tabs);
* app+N before: N more browsers already open on the Train page when the run starts (the
          classroom: students open the page, then the lecturer presses the button).

It prints the median of each and its ratio to the CLI's median, plus the CPU seconds the
Streamlit server and Chromium used during the app runs. Timings are ratios within one run
on a shared machine: keep other work off the cores while it runs.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
CONFIG = dict(method="lora", r=8, alpha=16, targets="q,v")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_seconds(pid: int, descendants: bool = True) -> float:
    """User + system CPU seconds of a process (and its descendants), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(c) for c in children if descendants)
    return total


def run_cli(env: dict, steps: int) -> float:
    cmd = [
        sys.executable, "-m", "minituner", "finetune", "--method", CONFIG["method"],
        "--rank", str(CONFIG["r"]), "--alpha", str(CONFIG["alpha"]),
        "--targets", CONFIG["targets"], "--steps", str(steps), "--force",
    ]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


class App:
    def __init__(self, env: dict) -> None:
        self.port = _free_port()
        self.log = open(Path(env["MINITUNER_CACHE"]).parent / "streamlit.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "streamlit", "run", "app/main.py",
                "--server.headless", "true", "--server.port", str(self.port),
                "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
                "--server.fileWatcherType", "none",
            ],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.read().decode().strip() == "ok":
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit("streamlit did not start; see " + self.log.name)
            time.sleep(0.3)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        self.log.close()


def run_app(
    app: App,
    browser,
    query: str,
    watchers: int,
    chromium_pid: int,
    before: bool = False,
    shared: bool = False,
) -> dict:
    """Press the train button with ``watchers`` more tabs open on the Train page, opened
    right after the press (``before=False``: each tab loads the app while the run goes)
    or before it (the tabs are loaded and idle when it starts); wait for the end.

    Each more tab is its own browser context (a separate profile: nothing cached, as on
    another person's browser), or with ``shared`` a tab of the pressing tab's browser
    (its HTTP and script caches, as for a lecturer who opens more tabs)."""
    first = browser.new_context(viewport={"width": 1500, "height": 1100})
    contexts = [first]
    page = first.new_page()
    page.set_default_timeout(600_000)
    page.goto(f"{app.url}/train?{query}")
    button = page.locator(".st-key-train_start button")
    button.wait_for()

    def open_tab():
        if shared:
            return first.new_page()
        ctx = browser.new_context(viewport={"width": 1500, "height": 1100})
        contexts.append(ctx)
        return ctx.new_page()

    tabs = []
    if before:
        for _ in range(watchers):
            w = open_tab()
            w.set_default_timeout(600_000)
            w.goto(f"{app.url}/train?{query}")
            w.locator(".st-key-train_start button").wait_for()
            tabs.append(w)
    page.wait_for_timeout(1500)  # the pages have settled: nothing else is running
    cpu0 = (_cpu_seconds(app.proc.pid, descendants=False), _cpu_seconds(chromium_pid))
    t0 = time.perf_counter()
    button.click()
    for _ in range(0 if before else watchers):
        w = open_tab()
        w.goto(f"{app.url}/train?{query}", wait_until="commit")
        tabs.append(w)
    for w in tabs:  # each watcher gets the live view, not just "busy"
        w.locator(".live-panel .live-progress").first.wait_for(timeout=600_000)
    page.get_by_text("Training finished").first.wait_for(timeout=600_000)
    wall = time.perf_counter() - t0
    server_cpu = _cpu_seconds(app.proc.pid, descendants=False) - cpu0[0]  # not the child
    browser_cpu = _cpu_seconds(chromium_pid) - cpu0[1]
    for c in contexts:
        c.close()
    return {"wall": wall, "server_cpu": server_cpu, "browser_cpu": browser_cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--watchers", type=int, default=2)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="bench_live_"))
    env = {**os.environ, "MINITUNER_CACHE": str(tmp / "cache"), "HOME": str(tmp)}
    env.pop("MINITUNER_EVAL_LIMIT", None)
    query = (
        f"method={CONFIG['method']}&r={CONFIG['r']}&alpha={CONFIG['alpha']}"
        f"&targets={CONFIG['targets']}&lr=0.005&steps={args.steps}&seed=0"
    )
    cores = os.cpu_count()
    print(f"bench_live: default LoRA config, {args.steps} steps, {cores} CPU cores, "
          f"{args.repeats} repeats interleaved")  # fmt: skip
    app = App(env)
    n = args.watchers
    modes = {  # name: (more tabs, opened before the press, tabs of the same browser)
        "app+0": (0, False, False),
        f"app+{n} after": (n, False, False),
        f"app+{n} after, same browser": (n, False, True),
        f"app+{n} before": (n, True, False),
    }
    times: dict[str, list[float]] = {"cli": [], **{k: [] for k in modes}}
    cpu: dict[str, list[tuple[float, float]]] = {k: [] for k in times if k != "cli"}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            chromium_pid = _chromium_pid()
            run_app(app, browser, query, 0, chromium_pid)  # warm-up: imports, page caches
            for i in range(args.repeats):
                times["cli"].append(run_cli(env, args.steps))
                for k, (w, before, shared) in modes.items():
                    r = run_app(app, browser, query, w, chromium_pid, before, shared)
                    times[k].append(r["wall"])
                    cpu[k].append((r["server_cpu"], r["browser_cpu"]))
                print(f"  repeat {i + 1}: " + ", ".join(
                    f"{k} {v[-1]:.1f} s" for k, v in times.items()))  # fmt: skip
            browser.close()
    finally:
        app.close()
    cli = statistics.median(times["cli"])
    print()
    print("| run | median wall (s) | ratio to CLI | server CPU (s) | Chromium CPU (s) |")
    print("|---|---:|---:|---:|---:|")
    print(f"| CLI `minituner finetune` | {cli:.1f} | 1.00 | - | - |")
    for k in cpu:
        med = statistics.median(times[k])
        s_cpu = statistics.median(c[0] for c in cpu[k])
        b_cpu = statistics.median(c[1] for c in cpu[k])
        tabs = {
            "app+0": "no other tab",
            f"app+{n} after": f"{n} more browsers (own profiles) opened right after the press",
            f"app+{n} after, same browser": (
                f"{n} more tabs of its browser opened right after the press"
            ),
            f"app+{n} before": f"{n} more browsers (own profiles) open before the press",
        }[k]
        print(f"| app, Train live, {tabs} | {med:.1f} | {med / cli:.2f} | {s_cpu:.1f} | "
              f"{b_cpu:.1f} |")  # fmt: skip


def _chromium_pid() -> int:
    """The browser's main process (the newest chromium whose parent is not chromium)."""
    best = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            comm = (d / "comm").read_text().strip()
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            parent = Path(f"/proc/{ppid}/comm").read_text().strip()
        except (OSError, ValueError):
            continue
        if comm.startswith("chromium") and not parent.startswith("chromium"):
            best = max(best, int(d.name))
    return best


if __name__ == "__main__":
    main()
