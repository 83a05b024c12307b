"""Password checks (docs/security.md §12): what one argon2id verification costs, and that a sign-in
for an unknown user costs the same as one for a known user with a wrong password.

    .venv/bin/python benchmarks/password_hashing.py [--runs 9]

Medians of ``--runs``, measured in this run, printed as ratios:
* wrong password for an unknown user / for a known user (``password_matches`` against the dummy hash
  vs a stored hash, timed in interleaved pairs): near 1.0 is what hides which names exist;
* argon2id verification at the controller's default parameters (64 MiB, t=3, p=4) / a SHA-256 of an
  API token (what each request with a token costs in hashing): why tokens get the fast hash;
* the milliseconds of one verification at the defaults, for sizing (a shared, noisy machine: read the
  ratios first).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from edgefleet.cloud.services.auth import hash_secret, new_secret
from edgefleet.cloud.services.users import PasswordPolicy, hash_password, password_matches

PASSWORD = "correct horse battery staple"


def median_s(fn: Callable[[], object], runs: int, repeat: int = 1) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        times.append((time.perf_counter() - start) / repeat)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    policy = PasswordPolicy()
    stored = hash_password(PASSWORD, policy=policy)
    password_matches(None, PASSWORD, policy=policy)   # makes the dummy hash before timing
    pairs = []   # interleaved, so load that comes and goes on a shared machine hits both alike
    for i in range(args.runs):
        order = [(stored, "known"), (None, "unknown")][:: 1 if i % 2 else -1]
        timed = {name: median_s(lambda h=h: password_matches(h, "a wrong password here", policy=policy), 1)
                 for h, name in order}
        pairs.append(timed)
    known = statistics.median(p["known"] for p in pairs)
    unknown_ratio = statistics.median(p["unknown"] / p["known"] for p in pairs)
    token = new_secret()
    sha = median_s(lambda: hash_secret(token), args.runs, repeat=10_000)
    print(f"argon2id {stored.split('$')[3]}, {args.runs} runs (medians)")
    print(f"unknown user / known user, wrong password: {unknown_ratio:.2f}x (median of {args.runs} interleaved pairs)")
    print(f"argon2id verification / sha256 of a token: {known / sha:,.0f}x")
    print(f"one argon2id verification: {known * 1000:.0f} ms")


if __name__ == "__main__":
    main()
