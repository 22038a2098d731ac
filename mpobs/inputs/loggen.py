"""A log generator: realistic lines with a level mix, a seed, and optionally awkward lines."""

from __future__ import annotations

import random
from typing import BinaryIO

LEVELS = ("INFO", "WARN", "ERROR", "DEBUG", "WARNING")
DEFAULT_MIX = (0.70, 0.12, 0.05, 0.10, 0.03)
SERVICES = ("api", "auth", "billing", "search", "worker", "db", "cache", "gateway")
MESSAGES = (
    "request handled path=/v1/items/{n} status=200 ms={ms}",
    "user {n} logged in from 10.0.{a}.{b}",
    "cache miss key=item:{n}",
    "slow query took {ms} ms table=orders",
    "connection reset by peer after {ms} ms",
    "retrying job {n} attempt {a}",
    "payment {n} declined code={a}",
    "disk usage at {a}% on /var",
    "queue depth {n} exceeds soft limit",
    "config reloaded version={a}.{b}",
)
#: Lines that have broken line-oriented tools before; each is one line of input.
AWKWARD = (
    b"",
    b"2026-01-01T00:00:00Z ERROR [api] crlf line\r",
    b"2026-01-01T00:00:00Z WARN [api] invalid utf-8 \xff\xfe\xc3\x28 here",
    b"2026-01-01T00:00:00Z INFO [api] braces {count} {line} {0} %s %d %%",
    b"2026-01-01T00:00:00Z ERROR [web] <img src=x onerror=alert(1)> <script>alert(2)</script>",
    "2026-01-01T00:00:00Z INFO [api] unicode \u2028 separator \u00e9\u4e2d\U0001f600".encode(),
    b"2026-01-01T00:00:00Z DEBUG [api] nul \x00 byte and \x0b vertical tab \x1c fs",
    b"ERRORS and WARNINGS are not levels; xINFO neither",
)


def generate(
    out: BinaryIO, lines: int, seed: int = 42, mix: tuple[float, ...] = DEFAULT_MIX, awkward: float = 0.0
) -> int:
    """Write ``lines`` lines to ``out``; ``awkward`` is the share of AWKWARD lines. Returns bytes written."""
    rng = random.Random(seed)
    levels = rng.choices(LEVELS, weights=mix, k=lines)
    written = 0
    buf: list[bytes] = []
    for i in range(lines):
        if awkward and rng.random() < awkward:
            line = rng.choice(AWKWARD)
        else:
            msg = rng.choice(MESSAGES).format(
                n=rng.randrange(100000), ms=rng.randrange(2000), a=rng.randrange(256), b=rng.randrange(256)
            )
            day, hour, minute = 1 + i // 3_000_000 % 28, i // 360000 % 24, i // 6000 % 60
            ts = f"2026-11-{day:02d}T{hour:02d}:{minute:02d}:{i // 100 % 60:02d}.{i % 100:02d}0Z"
            line = f"{ts} {levels[i]} [{rng.choice(SERVICES)}] {msg}".encode()
        buf.append(line)
        if len(buf) >= 10000:
            chunk = b"\n".join(buf) + b"\n"
            out.write(chunk)
            written += len(chunk)
            buf.clear()
    if buf:
        chunk = b"\n".join(buf) + b"\n"
        out.write(chunk)
        written += len(chunk)
    return written


def parse_mix(text: str) -> tuple[float, ...]:
    """``"INFO=70,WARN=12,ERROR=5,DEBUG=10,WARNING=3"`` -> weights in LEVELS order (missing: 0)."""
    weights = dict.fromkeys(LEVELS, 0.0)
    for part in filter(None, (p.strip() for p in text.split(","))):
        level, sep, value = part.partition("=")
        level = level.strip().upper()
        if not sep or level not in weights:
            msg = f"level mix {text!r}: expected LEVEL=WEIGHT items with LEVEL in {', '.join(LEVELS)}"
            raise ValueError(msg)
        try:
            weights[level] = float(value)
        except ValueError:
            raise ValueError(f"level mix {text!r}: weight of {level} is not a number: {value!r}") from None
        if weights[level] < 0:
            raise ValueError(f"level mix {text!r}: weight of {level} must be >= 0")
    if not any(weights.values()):
        raise ValueError(f"level mix {text!r}: at least one weight must be > 0")
    return tuple(weights[level] for level in LEVELS)


def generate_file(
    path: str, lines: int, seed: int = 42, awkward: float = 0.0, mix: tuple[float, ...] = DEFAULT_MIX
) -> int:
    with open(path, "wb") as f:
        return generate(f, lines, seed=seed, mix=mix, awkward=awkward)
