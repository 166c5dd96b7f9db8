"""Shared pieces of the fuzz harnesses: a data provider that works without atheris, a script writer for seed files,
the plain random-mutation runner used when atheris is absent, and the harness entry point.

The fallback provider consumes bytes exactly as atheris.FuzzedDataProvider does (integers from the end of the
input, most significant byte first, reduced modulo the range; byte strings and booleans from the
front), so one seed file drives a harness the same way with or without atheris (tests/test_fuzz_smoke.py
checks that equivalence).
"""

from __future__ import annotations

import contextlib
import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

FUZZ_DIR = Path(__file__).resolve().parent
CORPUS_DIR = FUZZ_DIR / "corpus"
TESTS_DIR = FUZZ_DIR.parent
REPO_DIR = TESTS_DIR.parent

TestOneInput = Callable[[bytes], None]


class DataProvider(Protocol):
    """The part of atheris.FuzzedDataProvider the harnesses use."""

    def ConsumeIntInRange(self, low: int, high: int) -> int: ...
    def ConsumeBytes(self, count: int) -> bytes: ...
    def ConsumeBool(self) -> bool: ...
    def remaining_bytes(self) -> int: ...


class ByteProvider:
    """atheris.FuzzedDataProvider's consumption rules, in plain Python."""

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._front = 0
        self._back = len(self._data)

    def remaining_bytes(self) -> int:
        return self._back - self._front

    def ConsumeIntInRange(self, low: int, high: int) -> int:
        span = high - low
        result = 0
        offset = 0
        while offset < 64 and (span >> offset) > 0 and self._back > self._front:
            self._back -= 1
            result = (result << 8) | self._data[self._back]
            offset += 8
        if span != 2**64 - 1:
            result %= span + 1
        return low + result

    def ConsumeBytes(self, count: int) -> bytes:
        count = max(0, min(count, self.remaining_bytes()))
        chunk = self._data[self._front : self._front + count]
        self._front += count
        return chunk

    def ConsumeBool(self) -> bool:
        first = self.ConsumeBytes(1)  # atheris takes a bool's byte from the front, unlike integers
        return bool(first and first[0] & 1)


class ScriptWriter:
    """Builds an input that a DataProvider reads back as the given calls, in the same order (for seed files)."""

    def __init__(self) -> None:
        self._front = bytearray()
        self._back: list[int] = []  # in consumption order

    def int_in_range(self, value: int, low: int, high: int) -> ScriptWriter:
        if not low <= value <= high:
            raise ValueError(f"{value} outside {low}..{high}")
        span = high - low
        needed = 0
        while needed * 8 < 64 and (span >> (needed * 8)) > 0:
            needed += 1
        offset = value - low
        self._back.extend((offset >> (8 * (needed - 1 - index))) & 0xFF for index in range(needed))
        return self

    def boolean(self, value: bool) -> ScriptWriter:
        self._front.append(1 if value else 0)
        return self

    def raw(self, data: bytes) -> ScriptWriter:
        self._front += data
        return self

    def build(self) -> bytes:
        return bytes(self._front) + bytes(reversed(self._back))


def atheris_module() -> Any | None:
    """atheris, or None when it is not installed (then the fallback runner is used)."""
    try:
        import atheris  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return None
    return atheris


def provider_for(data: bytes) -> DataProvider:
    atheris = atheris_module()
    if atheris is not None:
        provider: DataProvider = atheris.FuzzedDataProvider(data)
        return provider
    return ByteProvider(data)


def corpus_files(name: str) -> list[Path]:
    """Seed files of one harness ("codec" or "core"), sorted by name."""
    return sorted(path for path in (CORPUS_DIR / name).iterdir() if path.is_file())


def mutate(data: bytes, rng: random.Random, donors: list[bytes]) -> bytes:
    """One to four libFuzzer-like edits: flip, set, insert, delete, duplicate a span, splice from another seed."""
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(7)
        position = rng.randrange(len(buffer) + 1)
        if choice == 0 and buffer:
            buffer[position % len(buffer)] ^= 1 << rng.randrange(8)
        elif choice == 1 and buffer:
            buffer[position % len(buffer)] = rng.choice((0, 0xFF, 0x7F, 0x80, 0x40, rng.randrange(256)))
        elif choice == 2:
            buffer[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif choice == 3 and buffer:
            del buffer[position : position + rng.randint(1, 8)]
        elif choice == 4 and buffer:
            start = rng.randrange(len(buffer))
            span = buffer[start : start + rng.randint(1, 16)]
            buffer[position:position] = span
        elif choice == 5 and donors:
            donor = rng.choice(donors)
            start = rng.randrange(len(donor) + 1)
            buffer[position:] = donor[start:]
        elif choice == 6 and len(buffer) >= 2:
            # interesting 16-bit values (lengths, attribute types) at a random offset
            value = rng.choice((0, 4, 8, 20, 0x4000, 0x7FFF, 0x8000, 0xFFFF, len(buffer)))
            offset = position % (len(buffer) - 1)
            buffer[offset : offset + 2] = value.to_bytes(2, "big")
    return bytes(buffer[:4096])


def fallback_inputs(seeds: list[bytes], iterations: int, rng: random.Random) -> Iterator[bytes]:
    """Every seed once, then `iterations` mutants of seeds and of earlier mutants."""
    pool = list(seeds) or [b""]
    yield from pool
    for _ in range(iterations):
        mutant = mutate(rng.choice(pool), rng, pool)
        if len(pool) < 2000:
            pool.append(mutant)
        yield mutant


def run_fallback(test_one_input: TestOneInput, seeds: list[bytes], *, iterations: int, seed: int = 0,
                 max_seconds: float | None = None) -> int:
    """Call test_one_input on the seeds and their mutants; returns how many inputs ran. Exceptions propagate."""
    rng = random.Random(seed)
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    count = 0
    for data in fallback_inputs(seeds, iterations, rng):
        try:
            test_one_input(data)
        except BaseException:
            sys.stderr.write(f"crashing input ({len(data)} bytes): {data.hex()}\n")
            raise
        count += 1
        if deadline is not None and time.monotonic() > deadline:
            break
    return count


def _fallback_main(test_one_input: TestOneInput, argv: list[str]) -> None:
    """A libFuzzer-like command line for the fallback: corpus dirs or files, -runs=N, -max_total_time=S, -seed=N."""
    runs, seconds, seed = 10_000, None, 0
    seeds: list[bytes] = []
    for argument in argv[1:]:
        if argument.startswith("-runs="):
            runs = int(argument.split("=", 1)[1])
        elif argument.startswith("-max_total_time="):
            seconds = float(argument.split("=", 1)[1])
            runs = 10**12
        elif argument.startswith("-seed="):
            seed = int(argument.split("=", 1)[1])
        elif argument.startswith("-"):
            continue
        else:
            path = Path(argument)
            files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
            seeds.extend(file.read_bytes() for file in files)
    count = run_fallback(test_one_input, seeds, iterations=runs, seed=seed, max_seconds=seconds)
    print(f"fallback runner (atheris not installed): {count} inputs, no crash")


def fuzz_main(test_one_input: TestOneInput) -> None:
    """Entry point of a harness script: atheris (libFuzzer) when installed, else the mutation runner."""
    atheris = atheris_module()
    if atheris is None:
        _fallback_main(test_one_input, sys.argv)
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


def instrumented_imports(enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """Coverage instrumentation of the pyturn modules imported inside the block, when running under atheris."""
    atheris = atheris_module() if enabled else None
    if atheris is None:
        return contextlib.nullcontext()
    instrumenting: contextlib.AbstractContextManager[Any] = atheris.instrument_imports(include=["pyturn"])
    return instrumenting
