"""`python -m rlff_utils.params FILE...` validates params files (no models load)."""

from __future__ import annotations

from .files import load_params, parse_set
from .schema import ParamsError


def main(argv: list[str] | None = None) -> int:
    """`python -m rlff_utils.params FILE...` validates params files (no models load)."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--no-check-files", action="store_true")
    args = ap.parse_args(argv)
    status = 0
    for f in args.files:
        try:
            p = load_params(f, parse_set(args.sets), check_files=not args.no_check_files)
            print(f"ok  {f} -> {p.run_dir}")
        except ParamsError as e:
            print(e, file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
