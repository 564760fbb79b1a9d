"""Build ``rlff_utils/resources/ppdpp_ids.json``: PPDPP's ESConv evaluation splits as ESConv ids.

    python -m tools.build_ppdpp_ids --esconv DATA/esconv --ppdpp DATA/esconv/ppdpp

PPDPP (Deng et al., 2023) evaluates on 130 test and 130 valid cases (``esc-test.txt``,
``esc-valid.txt``), each one of the 1,300 ESConv dialogues with four of its fields. This script
finds every case in an ESConv copy in the ``thu-coai/esconv`` layout (``{train,valid,test}.json``)
by exact equality of those fields and writes, per PPDPP split and in PPDPP's order,
``[esconv split, index in that split's file, digest of the case]``. A case that matches no
ESConv dialogue, or more than one, stops the script: the list must be exact.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rlff_utils.dialogues import LoadReport, read_records
from rlff_utils.esconv import PPDPP_FIELDS, PPDPP_IDS, SPLITS, case_digest

OUT = Path(__file__).resolve().parents[1] / "rlff_utils" / "resources" / PPDPP_IDS
ABOUT = (
    "PPDPP's ESConv evaluation splits (esc-test.txt, esc-valid.txt; Deng et al., 2023) as ESConv ids: per case, "
    "in PPDPP's order, [split of thu-coai/esconv, index of the dialogue in that split's file, first 16 hex digits "
    "of the sha256 of the case's JSON (the fields below, sorted keys)]. Built by tools/build_ppdpp_ids.py."
)


def build(esconv_dir: Path, ppdpp_dir: Path) -> dict:
    index: dict[str, list[tuple[str, int]]] = {}
    for split in SPLITS:
        for i, rec in enumerate(read_records(esconv_dir / f"{split}.json", LoadReport(split))):
            if isinstance(rec, dict):
                key = json.dumps({k: rec.get(k) for k in PPDPP_FIELDS}, sort_keys=True)
                index.setdefault(key, []).append((split, i))
    out = {"about": ABOUT, "fields": list(PPDPP_FIELDS)}
    for split in ("test", "valid"):
        cases = []
        for n, rec in enumerate(read_records(ppdpp_dir / f"esc-{split}.txt", LoadReport(split))):
            if not isinstance(rec, dict) or set(rec) != set(PPDPP_FIELDS):
                raise SystemExit(f"esc-{split}.txt record {n}: expected an object with fields {PPDPP_FIELDS}")
            found = index.get(json.dumps(rec, sort_keys=True), [])
            if len(found) != 1:
                raise SystemExit(f"esc-{split}.txt record {n}: {len(found)} matching ESConv dialogues (need exactly 1)")
            cases.append([*found[0], case_digest(rec)])
        out[split] = cases
    return out


def write(ids: dict, path: Path) -> None:
    """Readable and diff-friendly: one case per line."""
    lines = ["{", f'  "about": {json.dumps(ids["about"])},', f'  "fields": {json.dumps(ids["fields"])},']
    for k, split in enumerate(("test", "valid")):
        rows = ",\n".join(f"    {json.dumps(c)}" for c in ids[split])
        lines.append(f'  "{split}": [\n{rows}\n  ]' + ("," if k == 0 else ""))
    path.write_text("\n".join(lines + ["}"]) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.build_ppdpp_ids", description=__doc__.split("\n\n")[0])
    ap.add_argument("--esconv", type=Path, required=True, help="folder with ESConv's train/valid/test.json")
    ap.add_argument("--ppdpp", type=Path, required=True, help="folder with PPDPP's esc-test.txt and esc-valid.txt")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    ids = build(args.esconv, args.ppdpp)
    write(ids, args.out)
    print(f"{args.out}: {len(ids['test'])} test + {len(ids['valid'])} valid cases", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
