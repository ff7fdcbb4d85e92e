"""Fuzz the running app through its own OpenAPI schema with Schemathesis: no server error, no hang.

Starts ``liverseg serve`` on the sample phantoms (shipped weights, the ``unet`` variant as a trainer), then runs
``schemathesis run <server>/openapi.json`` with the ``not_a_server_error`` check, ``--max-examples`` cases per
operation and a per-request timeout (a request that takes longer counts as a hang). Training runs that valid
generated requests start are stopped at the end. The JUnit report of Schemathesis is kept next to the summary.

Printed: operations, cases, server errors (5xx), hangs, and the failing operations with their first message.

    python benchmarks/api_fuzz.py [--max-examples 25] [--request-timeout 120] [--out benchmarks/results/api_fuzz.txt]
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import code_version  # noqa: E402
from _server import REPO, ServeProcess  # noqa: E402

STUDIES = REPO / "sample-data" / "Dataset001_LiverPhantom" / "imagesTs"


def summarize(junit: Path) -> dict:
    """Counts of a Schemathesis JUnit report: operations, failing operations (server errors, hangs, other)."""
    root = ET.parse(junit).getroot()
    ops, errors, hangs, other = 0, {}, {}, {}
    for case in root.iter("testcase"):
        ops += 1
        for node in list(case.findall("failure")) + list(case.findall("error")):
            text = " ".join(filter(None, [node.get("message"), node.text])).strip()
            low = text.lower()
            first = text.splitlines()[0][:200] if text else ""
            if "timed out" in low or "timeout" in low:
                hangs[case.get("name")] = first
            elif "server error" in low or " 5" in low[:40]:
                errors[case.get("name")] = first
            else:
                other[case.get("name")] = first
    return {"operations": ops, "server_errors": errors, "hangs": hangs, "other": other}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-examples", type=int, default=25, help="cases per operation (Schemathesis -n)")
    ap.add_argument("--request-timeout", type=float, default=120.0, help="seconds before a request counts as a hang")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "api_fuzz.txt")
    args = ap.parse_args(argv)
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    if not exe:
        print("schemathesis is not installed: pip install -e '.[dev]'", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="liverseg-fuzz-") as tmp:
        tmp = Path(tmp)
        junit = tmp / "junit.xml"
        with ServeProcess(STUDIES, tmp / "serve", conf=[("variants", "unet")]) as srv:
            cmd = [exe, "run", f"{srv.url}/openapi.json", "--checks", "not_a_server_error",
                   "--max-examples", str(args.max_examples), "--request-timeout", str(args.request_timeout),
                   "--seed", str(args.seed), "--continue-on-failure", "--report", "junit",
                   "--report-junit-path", str(junit)]  # fmt: skip
            run = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)  # its .schemathesis cache goes there
            requests.delete(f"{srv.url}/train/", timeout=60)
            alive = requests.get(f"{srv.url}/info/", timeout=60).status_code == 200
        if not junit.is_file():
            print(run.stdout[-4000:], run.stderr[-4000:], sep="\n", file=sys.stderr)
            return 2
        s = summarize(junit)
        cases = next((ln for ln in run.stdout.splitlines() if " generated, " in ln), "").strip()
        lines = [
            f"# Schemathesis on the app's OpenAPI schema, {datetime.date.today().isoformat()} ({code_version()})",
            f"command: {' '.join(cmd[1:2])} <server>/openapi.json {' '.join(cmd[3:-2])}",
            f"operations: {s['operations']}; cases: {cases or 'see the Schemathesis output'}",
            f"server errors (5xx): {len(s['server_errors'])} operations; hangs (> {args.request_timeout:g} s): "
            f"{len(s['hangs'])}; other failures: {len(s['other'])}; server alive after: {alive}",
        ]
        for kind in ("server_errors", "hangs", "other"):
            for name, msg in sorted(s[kind].items()):
                lines.append(f"  {kind}: {name}: {msg}")
        text = "\n".join(lines)
        print(text)
        print(run.stdout[-3000:])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n\n" + run.stdout[-6000:])
        shutil.copy2(junit, args.out.with_suffix(".junit.xml"))
    return 0 if s["operations"] and not s["server_errors"] and not s["hangs"] and alive else 1


if __name__ == "__main__":
    sys.exit(main())
