"""One measurement process: ``python -m benchmarks.child SPEC``; prints a JSON line per contender.

SPEC is JSON: ``{"case": name, "labels": [...], "params": {...}}``.  A
contender that cannot run here (a peer that is not installed, a feature not
built yet) reports ``skip``; one that fails reports ``error``.
"""

from __future__ import annotations

import json
import sys
import traceback


def main() -> None:
    spec = json.loads(sys.argv[1])
    from benchmarks.cases import CASES
    from benchmarks.harness import Skip

    case = CASES[spec["case"]]
    for label in spec["labels"]:
        contender = case.find(label)
        try:
            rec = dict(contender.run(dict(spec["params"])))
        except Skip as exc:
            rec = {"skip": str(exc)}
        except ImportError as exc:
            rec = {"skip": f"not installed: {exc.name or exc}"}
        except Exception as exc:
            traceback.print_exc()
            rec = {"error": f"{type(exc).__name__}: {exc}"}
        rec["label"] = label
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
