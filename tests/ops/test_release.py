"""The Python release: `python -m build` makes an sdist and a wheel that `twine check` accepts, and the wheel,
installed into a fresh virtualenv, serves from its console script and passes the library tests (a few written
here, and the repository's test_library, test_pytest_plugin and test_stun copied out) run outside the repository.

Building and installing need the dev extra (build, twine) and a package index for the isolated build and the
fresh venv; the server listens on 127.0.0.1 only and every wait is bounded.
"""

from __future__ import annotations

import email.parser
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from interop import LOOPBACK, free_port, stop_process, wait_for_binding, write_config
from requirements import require

import pyturn

REPOSITORY = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT = 240.0
INSTALL_TIMEOUT = 240.0
RUN_TIMEOUT = 120.0


def _require_module(name: str) -> None:
    require(importlib.util.find_spec(name) is not None,
            f"python package {name} is not installed (pip install -e '.[dev]')")


def _run(command: list[str], timeout: float, **options: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False,
                            **options)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{command} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sdist and wheel of the working tree, built by `python -m build` (the wheel is built from the sdist)."""
    _require_module("build")
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(REPOSITORY)], BUILD_TIMEOUT)
    return out


def _wheel(dist: Path) -> Path:
    (wheel,) = dist.glob("pyturn-*-py3-none-any.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv (outside the repository): the wheel, its dependencies, pytest, pytest-asyncio and aioice."""
    home = tmp_path_factory.mktemp("venv")
    venv.create(home, with_pip=True, clear=True)
    python = home / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(_wheel(dist)),
          "pytest", "pytest-asyncio", "aioice"], INSTALL_TIMEOUT)
    yield home


def test_release_sdist_and_wheel_pass_twine_check(dist: Path) -> None:
    _require_module("twine")
    files = sorted(str(path) for path in dist.iterdir())
    assert [Path(name).name for name in files] == [f"pyturn-{pyturn.__version__}-py3-none-any.whl",
                                                  f"pyturn-{pyturn.__version__}.tar.gz"]
    result = _run([sys.executable, "-m", "twine", "check", "--strict", *files], RUN_TIMEOUT)
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_release_wheel_carries_metadata_entry_points_and_package_data(dist: Path) -> None:
    with zipfile.ZipFile(_wheel(dist)) as wheel:
        names = set(wheel.namelist())
        info = f"pyturn-{pyturn.__version__}.dist-info"
        metadata = email.parser.Parser().parsestr(wheel.read(f"{info}/METADATA").decode())
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
    assert "pyturn/py.typed" in names
    assert f"{info}/licenses/LICENSE" in names or f"{info}/LICENSE" in names
    assert not any(name.startswith(("tests/", "benchmarks/", "debian/")) for name in names)
    assert metadata["Version"] == pyturn.__version__
    assert metadata["Requires-Python"] == ">=3.11"
    requirements = metadata.get_all("Requires-Dist") or []
    # Debian 12 ships cryptography 38, PyYAML 6.0 and uvloop 0.17: the floors must admit them.
    assert "cryptography>=38" in requirements
    assert any(line.startswith("pyyaml>=6") for line in requirements)
    assert any(line.startswith("uvloop>=0.17") for line in requirements)
    assert "pyturn = pyturn.ops.cli:main" in entry_points
    assert "[pytest11]" in entry_points and "pyturn = pyturn.testing" in entry_points


def test_release_sdist_carries_tests_conf_and_changelog(dist: Path) -> None:
    (sdist,) = dist.glob("pyturn-*.tar.gz")
    prefix = f"pyturn-{pyturn.__version__}/"
    with tarfile.open(sdist) as archive:
        names = {name.removeprefix(prefix) for name in archive.getnames()}
    for required in ("CHANGELOG.md", "LICENSE", "README.md", "pyproject.toml", "conf/reTurnServer.config",
                     "conf/users.txt", "tests/conftest.py", "tests/wire/vectors/rfc5769.json", "scripts/test.sh"):
        assert required in names, required
    assert not any("__pycache__" in name for name in names)


def test_release_installed_console_script_serves_a_binding(installed: Path, tmp_path: Path) -> None:
    version = _run([str(installed / "bin" / "pyturn"), "--version"], RUN_TIMEOUT, cwd=tmp_path)
    assert version.stdout == f"pyturn {pyturn.__version__}\n"
    port = free_port(ipv6=False)
    config = write_config(tmp_path, port, extra={"TurnV6Address": ""})
    with open(tmp_path / "server.log", "wb") as log:
        process = subprocess.Popen([str(installed / "bin" / "pyturn"), "-c", str(config)], cwd=tmp_path,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_binding(LOOPBACK, port, 10.0, process)
    finally:
        stop_process(process)
    assert process.returncode == 0, (tmp_path / "server.log").read_text(errors="replace")


LIBRARY_TESTS = '''
    """Runs in a fresh venv from a folder outside the repository: only the installed wheel is importable."""

    import os
    import socket
    import ssl
    import sys

    import pytest

    import pyturn
    from pyturn.wire.message import Attr, Message, MessageClass, Method
    from pyturn.wire.codec import decode_message, encode_message
    from pyturn.testing import TurnServerFixture


    def test_pyturn_comes_from_the_venv():
        assert pyturn.__file__.startswith(sys.prefix), pyturn.__file__
        assert "REPOSITORY" not in os.environ.get("PYTHONPATH", "")


    def test_binding_over_udp(turn_server: TurnServerFixture):
        request = Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5.0)
            sock.sendto(encode_message(request), turn_server.addresses["udp"][0])
            answer = decode_message(sock.recv(2048))
            assert answer.get(Attr.XOR_MAPPED_ADDRESS) == ("127.0.0.1", sock.getsockname()[1])


    @pytest.mark.turn_server(transports=("tls",))
    def test_tls_listener_with_a_generated_certificate(turn_server: TurnServerFixture):
        host, port = turn_server.addresses["tls"][0]
        context = turn_server.client_ssl_context()
        request = Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12))
        with socket.create_connection((host, port), timeout=5.0) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(encode_message(request))
                answer = decode_message(tls.recv(2048))
        assert answer.msg_class is MessageClass.SUCCESS


    async def test_server_in_an_async_test(turn_server: TurnServerFixture):
        assert turn_server.allocation_count() == 0
'''


# The repository's tests that need nothing but the installed package (and aioice as the independent client).
REPOSITORY_LIBRARY_TESTS = ("net/test_library.py", "net/test_pytest_plugin.py", "wire/test_stun.py")


def test_release_installed_wheel_runs_library_tests_outside_the_repository(installed: Path, tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_with_pyturn.py").write_text(textwrap.dedent(LIBRARY_TESTS).replace("REPOSITORY", str(REPOSITORY)))
    for name in REPOSITORY_LIBRARY_TESTS:
        shutil.copy2(REPOSITORY / "tests" / name, suite / Path(name).name)
    shutil.copytree(REPOSITORY / "tests" / "wire" / "vectors", suite / "vectors")
    (suite / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(
        [str(installed / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)],
        cwd=suite, env=environment, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    passed = re.search(r"(\d+) passed", result.stdout)
    functions = sum(len(re.findall(r"^(?:async )?def test_", (suite / name).read_text(), re.MULTILINE))
                    for name in (*(Path(name).name for name in REPOSITORY_LIBRARY_TESTS), "test_with_pyturn.py"))
    assert passed is not None and int(passed.group(1)) >= functions, result.stdout  # parametrized ones count more
    assert " skipped" not in result.stdout, result.stdout


def test_release_changelog_has_an_entry_for_the_version() -> None:
    headings = [line for line in (REPOSITORY / "CHANGELOG.md").read_text().splitlines() if line.startswith("## ")]
    assert headings[0] == "## Unreleased" or headings[0].startswith(f"## {pyturn.__version__}")
    assert any(heading.startswith(f"## {pyturn.__version__}") for heading in headings), headings
