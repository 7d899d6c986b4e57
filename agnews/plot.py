"""Training curves as a picture, read from a run's TensorBoard event files.

python -m agnews.plot                         # the latest run: writes lightning_logs/version_N/curves.png
python -m agnews.plot RUN_DIR [RUN_DIR ...]   # several runs overlaid, with a legend (--out: where to write)
"""

import argparse
import sys
from pathlib import Path

from agnews.errors import AGNewsError
from agnews.training.curves import latest_run, plot_runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path, help="run folders (default: the latest run)")
    parser.add_argument(
        "--out", type=Path, help="PNG to write (default: RUN/curves.png, or ./curves.png for several runs)"
    )
    args = parser.parse_args(argv)
    try:
        runs = args.runs or [latest_run()]
        for run in runs:
            if not run.is_dir():
                raise AGNewsError(f"{run} is not a folder; pass a run folder such as lightning_logs/version_0")
        out = args.out or (runs[0] / "curves.png" if len(runs) == 1 else Path("curves.png"))
        print(f"agnews: curves written to {plot_runs(runs, out)}")
    except AGNewsError as err:
        print(f"agnews: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
