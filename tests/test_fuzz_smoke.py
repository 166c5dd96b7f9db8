"""A short run of the fuzz harnesses in tests/fuzz/ (a long campaign: tests/fuzz/README.md).

Every seed goes through TestOneInput directly; then each harness runs under atheris for a bounded number of
inputs in a subprocess (on a copy of its corpus: libFuzzer writes new inputs into the corpus directory). Without
atheris the plain mutation runner stands in, except in CI (CI=true), where a missing atheris is a failure.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from requirements import require, under_ci

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))

import fuzz_codec
import fuzz_core
import fuzzkit

HARNESSES = {"codec": fuzz_codec.TestOneInput, "core": fuzz_core.TestOneInput}
ATHERIS_RUNS = 2000
FALLBACK_MUTATIONS = 1500
SUBPROCESS_TIMEOUT = 60


@pytest.mark.parametrize("name", sorted(HARNESSES), ids=sorted(HARNESSES))
def test_fuzz_harness_accepts_every_seed(name: str) -> None:
    seeds = fuzzkit.corpus_files(name)
    assert len(seeds) >= 5
    for seed in seeds:
        HARNESSES[name](seed.read_bytes())


@pytest.mark.parametrize("name", sorted(HARNESSES), ids=sorted(HARNESSES))
def test_fuzz_harness_survives_a_short_campaign(name: str, tmp_path: Path) -> None:
    atheris = fuzzkit.atheris_module()
    if atheris is None:
        if under_ci():
            pytest.fail("atheris is not importable in CI: install the test extra (pip install -e '.[test]')")
        seeds = [path.read_bytes() for path in fuzzkit.corpus_files(name)]
        assert fuzzkit.run_fallback(HARNESSES[name], seeds, iterations=FALLBACK_MUTATIONS, seed=8) > FALLBACK_MUTATIONS
        return
    corpus = tmp_path / "corpus"
    shutil.copytree(fuzzkit.CORPUS_DIR / name, corpus)
    script = fuzzkit.FUZZ_DIR / f"fuzz_{name}.py"
    completed = subprocess.run(
        [sys.executable, str(script), f"-runs={ATHERIS_RUNS}", "-seed=8", f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, cwd=str(tmp_path),
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert f"Done {ATHERIS_RUNS} runs" in completed.stderr


def test_fuzz_fallback_provider_matches_atheris() -> None:
    atheris = fuzzkit.atheris_module()
    require(atheris is not None, "atheris not installed: nothing to compare the fallback provider with")
    rng = random.Random(5)
    for _ in range(300):
        data = rng.randbytes(rng.randrange(40))
        ours, theirs = fuzzkit.ByteProvider(data), atheris.FuzzedDataProvider(data)
        for _ in range(12):
            choice = rng.randrange(3)
            if choice == 0:
                low = rng.randrange(-5, 100)
                high = low + rng.choice((0, 1, 2, 255, 256, 1000, 70000, 2**40))
                assert ours.ConsumeIntInRange(low, high) == theirs.ConsumeIntInRange(low, high)
            elif choice == 1:
                count = rng.randrange(10)
                assert ours.ConsumeBytes(count) == theirs.ConsumeBytes(count)
            else:
                assert ours.ConsumeBool() == theirs.ConsumeBool()
            assert ours.remaining_bytes() == theirs.remaining_bytes()


def test_fuzz_script_writer_round_trips_through_the_provider() -> None:
    writer = fuzzkit.ScriptWriter().int_in_range(3, 0, 13).raw(b"abc").int_in_range(0x4001, 0x3FFE, 0x8001)
    writer.boolean(True).int_in_range(-1, -1, 4000).int_in_range(7, 7, 7).raw(b"de")
    provider = fuzzkit.ByteProvider(writer.build())
    assert provider.ConsumeIntInRange(0, 13) == 3
    assert provider.ConsumeBytes(3) == b"abc"
    assert provider.ConsumeIntInRange(0x3FFE, 0x8001) == 0x4001
    assert provider.ConsumeBool() is True
    assert provider.ConsumeIntInRange(-1, 4000) == -1
    assert provider.ConsumeIntInRange(7, 7) == 7
    assert provider.ConsumeBytes(5) == b"de"
    assert provider.remaining_bytes() == 0
