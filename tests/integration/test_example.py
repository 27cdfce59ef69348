"""The PrimeJob example end to end, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.workers import REPO


def count_primes(limit: int) -> int:
    sieve = bytearray([1]) * limit
    sieve[0:2] = b"\x00\x00"
    for i in range(2, int(limit**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytearray(len(sieve[i * i :: i]))
    return sum(sieve)


def test_prime_example_end_to_end(db_url: str) -> None:
    env = {**os.environ, "CORE4CELERY_MONGODB_URL": db_url, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-m", "examples.prime.run", "--end", "200000", "--size", "20000", "--workers", "2"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"primes found: {count_primes(200_000):,} in" in out.stdout
