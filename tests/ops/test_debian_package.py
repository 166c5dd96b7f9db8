"""The Debian package (debian/): built with dpkg-buildpackage from a clean copy of the tree, lintian clean, and
installed, removed and purged with apt inside a throwaway Debian 12 chroot.

The chroot is a copy of a debootstrap'd bookworm (minbase) kept in /var/cache/pyturn-tests, so the machine's own
packages, users and /etc are never touched; every command in it runs in a private mount namespace (its /proc and
apt cache mounts vanish with the command) and the server inside it runs in a network namespace of its own. The
build, chroot and apt steps need root, dpkg-buildpackage, debhelper, dh-python, lintian and debootstrap (the
root tests skip without them, and fail under CI). The other tests check the packaging files on any machine.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from requirements import require

import pyturn
from pyturn.config import KEYS
from pyturn.files.configfile import load_config
from pyturn.files.userfile import load_user_file
from pyturn.ops.manpage import config_page, server_page

REPOSITORY = Path(__file__).resolve().parents[2]
DEBIAN = REPOSITORY / "debian"
CACHE = Path("/var/cache/pyturn-tests")
BASE = CACHE / "bookworm-minbase"
ARCHIVES = CACHE / "apt-archives"
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # the build must use Debian's python3, not a pyenv or venv one
BUILD_TIMEOUT = 300.0
DEBOOTSTRAP_TIMEOUT = 400.0
APT_TIMEOUT = 300.0
STEP_TIMEOUT = 60.0

# The reTurn configuration a handbook reader has: resiprocate-turn-server's Debian settings (hashed users, TLS off,
# syslog-style daemon keys), comments left out.
HANDBOOK_CONFIG = """\
TurnAddress = 0.0.0.0
TurnV6Address = ::0
TurnPort = 3478
TlsTurnPort = 0
AltStunAddress = 0.0.0.0
AltStunPort = 0
LoggingType = file
SyslogFacility = LOG_DAEMON
LoggingLevel = WARNING
LogFilename = /var/log/reTurnServer/reTurnServer.log
LogFileMaxLines = 0
Daemonize = true
PidFile = /var/run/reTurnServer/reTurnServer.pid
RunAsUser = return
RunAsGroup = return
AuthenticationRealm = reTurn
UserDatabaseFile = /etc/reTurn/users.txt
UserDatabaseHashedPasswords = true
UserDatabaseCheckInterval = 60
NonceLifetime = 3600
AllocationPortRangeMin = 49152
AllocationPortRangeMax = 65535
DefaultAllocationLifetime = 600
MaxAllocationLifetime = 3600
TlsServerCertificateFilename = server.pem
TlsServerPrivateKeyFilename = server-key.pem
TlsTempDhFilename = /etc/reTurn/dh512.pem
TlsPrivateKeyPassword =
"""
# htdigest -c users.txt reTurn alice (password "wonderland"): HA1 = MD5("alice:reTurn:wonderland").
HANDBOOK_USER, HANDBOOK_PASSWORD = "alice", "wonderland"
HANDBOOK_USERS = f"{HANDBOOK_USER}:reTurn:{hashlib.md5(b'alice:reTurn:wonderland').hexdigest()}\n"


def _unavailable(message: str) -> None:
    require(False, f"{message} (the Debian package test is mandatory under CI)")


def _run(command: list[str], timeout: float, **options: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False,
                            **options)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{command} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result  # type: ignore[no-any-return]


def _system_environment() -> dict[str, str]:
    return {"PATH": SYSTEM_PATH, "HOME": os.environ.get("HOME", "/root"), "LC_ALL": "C.UTF-8",
            "DEBIAN_FRONTEND": "noninteractive"}


# ------------------------------------------------------------------------------------- packaging files, no root
def test_debian_changelog_version_is_the_python_version() -> None:
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    match = re.fullmatch(r"pyturn \(([^)-]+)-(\d+)\) \w+; urgency=\w+", first)
    assert match is not None, first
    assert match.group(1) == pyturn.__version__


def test_debian_control_takes_over_from_resiprocate_turn_server() -> None:
    control = (DEBIAN / "control").read_text()
    binary = control.split("\nPackage: pyturn\n", 1)[1]
    for field in ("Conflicts", "Replaces", "Provides"):
        assert re.search(rf"^{field}: resiprocate-turn-server,?$", binary, re.MULTILINE), field
    assert "Architecture: all" in binary
    assert "debhelper-compat (= 13)" in control and "pybuild-plugin-pyproject" in control


def test_debian_fresh_config_has_tls_off_and_no_user(tmp_path: Path) -> None:
    config, warnings = load_config(str(DEBIAN / "conf" / "reTurnServer.config"),
                                   [f"--UserDatabaseFile={DEBIAN / 'conf' / 'users.txt'}"])
    assert warnings == []
    assert config.tls_turn_port == 0
    assert (config.run_as_user, config.run_as_group) == ("return", "return")
    assert config.turn_port == 3478
    assert config.user_database_hashed_passwords is True
    assert config.log_filename == "/var/log/reTurnServer/reTurnServer.log"
    users, problems = load_user_file(DEBIAN / "conf" / "users.txt", hashed=True)
    assert (len(users), problems) == (0, [])


def test_manpages_list_every_key_and_format_without_warnings(tmp_path: Path) -> None:
    page = config_page()
    for spec in KEYS.values():
        assert f"\\fB{spec.name}\\fR" in page, spec.name
    groff = shutil.which("groff")
    if groff is None:
        _unavailable("groff is not installed")
    for name, text in (("pyturn.8", server_page()), ("reTurnServer.config.5", page)):
        (tmp_path / name).write_text(text)
        result = _run([str(groff), "-man", "-ww", "-z", "-t", str(tmp_path / name)], STEP_TIMEOUT)
        assert result.stderr == "", f"{name}: {result.stderr}"


# ------------------------------------------------------------------------------------------------ the build
def _require_root_tools(*tools: str) -> None:
    if os.geteuid() != 0:
        _unavailable("the Debian package test needs root")
    missing = [tool for tool in tools if shutil.which(tool, path=SYSTEM_PATH) is None]
    if missing:
        _unavailable(f"missing {', '.join(missing)} (scripts/test.sh installs them as root)")


_NOT_SOURCE = (".git", ".venv", "venv", "__pycache__", "*.egg-info", "build", "dist", ".mypy_cache", ".ruff_cache",
               ".pytest_cache", ".hypothesis", ".debhelper", "results")


def _copy_tree(destination: Path) -> None:
    """The working tree as git sees it (tracked and untracked files, ignored ones left out): a clean checkout."""
    if not (REPOSITORY / ".git").exists():  # an unpacked sdist or tarball: copy it without build leftovers
        shutil.copytree(REPOSITORY, destination, symlinks=True, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
        return
    listing = _run(["git", "-C", str(REPOSITORY), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                   STEP_TIMEOUT).stdout
    for name in filter(None, listing.split("\0")):
        source = REPOSITORY / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the working tree
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory holding pyturn_<version>_all.deb and its .changes, from `dpkg-buildpackage -us -uc -b`."""
    _require_root_tools("dpkg-buildpackage", "dh", "dh_python3", *(["git"] if (REPOSITORY / ".git").exists() else []))
    out = tmp_path_factory.mktemp("deb")
    source = out / "pyturn"
    _copy_tree(source)
    environment = _system_environment()
    missing = subprocess.run(["dpkg-checkbuilddeps"], cwd=source, env=environment, capture_output=True, text=True,
                             timeout=STEP_TIMEOUT, check=False)
    if missing.returncode != 0:
        _unavailable(missing.stderr.strip())
    _run(["dpkg-buildpackage", "-us", "-uc", "-b"], BUILD_TIMEOUT, cwd=source, env=environment)
    return out


def _debian_names_of_python_requirements() -> set[str]:
    """python3-<name> for each [project] dependency of pyproject.toml (PyYAML is python3-yaml in Debian)."""
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]
    names = set()
    for requirement in project["dependencies"]:
        name = re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        names.add({"pyyaml": "python3-yaml"}.get(name, f"python3-{name}"))
    return names


def _deb(built: Path) -> Path:
    return built / f"pyturn_{pyturn.__version__}-1_all.deb"


def test_debian_package_contents(built: Path) -> None:
    listing = _run(["dpkg-deb", "--contents", str(_deb(built))], STEP_TIMEOUT).stdout
    paths = {line.split()[5].removeprefix(".") for line in listing.splitlines()}
    for path in ("/usr/bin/pyturn", "/lib/systemd/system/pyturn.service", "/etc/logrotate.d/pyturn",
                 "/etc/reTurn/reTurnServer.config", "/etc/reTurn/users.txt", "/usr/share/man/man8/pyturn.8.gz",
                 "/usr/share/man/man5/reTurnServer.config.5.gz", "/usr/lib/python3/dist-packages/pyturn/py.typed",
                 "/usr/share/doc/pyturn/copyright", "/usr/share/doc/pyturn/README.Debian"):
        assert path in paths, path
    assert "/usr/sbin/reTurnServer" not in paths  # README.Debian says why
    fields = _run(["dpkg-deb", "--field", str(_deb(built)), "Depends", "Architecture"], STEP_TIMEOUT).stdout
    depends = {item.split()[0] for item in fields.split("\n", 1)[0].removeprefix("Depends:").split(",")}
    assert {"adduser", "python3-uvloop", "python3-yaml", "python3-cryptography"} <= depends, fields
    assert _debian_names_of_python_requirements() <= depends, fields  # every runtime requirement maps to Debian's
    assert "Architecture: all" in fields
    conffiles = _run(["dpkg-deb", "--info", str(_deb(built)), "conffiles"], STEP_TIMEOUT).stdout.split()
    assert sorted(conffiles) == ["/etc/logrotate.d/pyturn", "/etc/reTurn/reTurnServer.config",
                                 "/etc/reTurn/users.txt"]


def test_debian_package_unit_passes_systemd_analyze_verify(built: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        _unavailable("systemd-analyze is not installed")
    _run(["dpkg-deb", "--extract", str(_deb(built)), str(tmp_path / "tree")], STEP_TIMEOUT)
    unit = (tmp_path / "tree" / "lib" / "systemd" / "system" / "pyturn.service").read_text()
    assert "Documentation=man:pyturn(8) man:reTurnServer.config(5)\n" in unit
    # verify insists that ExecStart's program exists and (without --man=no) that the manual pages are installed
    (tmp_path / "pyturn.service").write_text(unit.replace("/usr/bin/pyturn", "/bin/true"))
    result = subprocess.run([str(analyze), "verify", "--man=no", str(tmp_path / "pyturn.service")], capture_output=True,
                            text=True, timeout=STEP_TIMEOUT, check=False)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "pyturn.service" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_debian_package_is_lintian_clean(built: Path) -> None:
    _require_root_tools("lintian")
    (changes,) = built.glob("pyturn_*.changes")
    result = subprocess.run(["lintian", "--display-info", "--fail-on", "error,warning", str(changes)],
                            cwd=built, env=_system_environment(), capture_output=True, text=True,
                            timeout=BUILD_TIMEOUT, check=False)
    tags = [line for line in result.stdout.splitlines() if re.match(r"[EWIX]: ", line)]
    assert (result.returncode, tags) == (0, []), result.stdout + result.stderr


# ------------------------------------------------------------------------------------------------ the chroot
@dataclass
class Chroot:
    root: Path

    def run(self, script: str, timeout: float = STEP_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`script` under sh in the chroot, in a private mount namespace holding its /proc and the apt cache."""
        mounts = (f'mount -t proc proc "$1/proc" && mount --bind {ARCHIVES} "$1/var/cache/apt/archives" && '
                  'exec chroot "$1" /bin/sh -ec "$2"')
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-ec", mounts, "sh", str(self.root), script],
            env=_system_environment(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
            check=False,
        )
        if check:
            assert result.returncode == 0, f"{script}\nexited {result.returncode}\n{result.stdout}\n{result.stderr}"
        return result

    def path(self, name: str) -> Path:
        return self.root / name.lstrip("/")


def _mirror() -> str:
    """The Debian mirror the host's apt uses (deb.debian.org when none is found)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for source in sources:
        text = source.read_text(errors="replace") if source.is_file() else ""
        for match in re.finditer(r"(?:^deb\s+(?:\[[^]]*\]\s+)?|^URIs:\s*)(\S+)", text, re.MULTILINE):
            uri = match.group(1).rstrip("/")
            if uri.startswith("http") and uri.endswith("/debian"):
                return uri
    return "http://deb.debian.org/debian"


def _base_system() -> Path:
    """A bookworm minbase tree, made once by debootstrap and kept in /var/cache/pyturn-tests."""
    if (BASE / "etc" / "debian_version").exists():
        return BASE
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = CACHE / "bookworm-minbase.partial"
    shutil.rmtree(partial, ignore_errors=True)
    _run(["debootstrap", "--variant=minbase", "bookworm", str(partial), _mirror()], DEBOOTSTRAP_TIMEOUT,
         env=_system_environment())
    # Services never start in the chroot (Debian's policy-rc.d convention; deb-systemd-invoke honours it too).
    policy = partial / "usr" / "sbin" / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    partial.rename(BASE)
    return BASE


@pytest.fixture
def chroot(tmp_path: Path) -> Iterator[Chroot]:
    _require_root_tools("debootstrap", "unshare", "chroot")
    base = _base_system()
    ARCHIVES.mkdir(parents=True, exist_ok=True)
    root = tmp_path / "root"
    _run(["cp", "-a", "--reflink=auto", str(base), str(root)], STEP_TIMEOUT)
    shutil.copy2("/etc/resolv.conf", root / "etc" / "resolv.conf")
    mirror = _mirror()
    sources = f"deb {mirror} bookworm main\ndeb {mirror} bookworm-updates main\n"
    (root / "etc" / "apt" / "sources.list").write_text(sources)
    try:
        yield Chroot(root)
    finally:
        leftover = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True,
                                  timeout=STEP_TIMEOUT, check=False).stdout
        assert str(root) not in leftover, "a mount leaked out of the chroot's namespace"
        shutil.rmtree(root, ignore_errors=True)


def _fingerprint(path: Path) -> tuple[str, int, int, int]:
    status = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), status.st_mode, status.st_uid, status.st_gid


APT = "apt-get -y -q -o Dpkg::Use-Pty=0"

# Inside the chroot's own network namespace: loopback up, the packaged server started the way pyturn.service
# starts it, then a Binding and an authenticated Allocate by the handbook's htdigest user over UDP.
SERVER_PROBE = """\
import fcntl, os, socket, struct, subprocess, sys, time
from pyturn.wire.message import Attr, Message, MessageClass, Method
from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.integrity import long_term_key

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as control:
    flags = struct.unpack("16sH", fcntl.ioctl(control, SIOCGIFFLAGS, struct.pack("16sH", b"lo", 0)))[1]
    fcntl.ioctl(control, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP))

server = subprocess.Popen(["/usr/bin/pyturn", "/etc/reTurn/reTurnServer.config", "--Daemonize=false"])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(0.5)

def ask(message):
    sock.sendto(encode_message(message, integrity_key=key), ("127.0.0.1", 3478))
    return decode_message(sock.recv(4096))

try:
    key = None
    deadline = time.monotonic() + 20
    while True:
        try:
            answer = ask(Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12)))
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"no Binding answer; server exit status {server.poll()}")
    print("binding", answer.msg_class.name, answer.get(Attr.XOR_MAPPED_ADDRESS)[0])
    challenge = ask(Message(Method.ALLOCATE, MessageClass.REQUEST, os.urandom(12)).add(Attr.REQUESTED_TRANSPORT, 17))
    print("challenge", challenge.get(Attr.ERROR_CODE)[0])
    user, password = sys.argv[1:3]
    key = long_term_key(user, challenge.get(Attr.REALM), password)
    allocate = Message(Method.ALLOCATE, MessageClass.REQUEST, os.urandom(12))
    for attr, value in ((Attr.REQUESTED_TRANSPORT, 17), (Attr.USERNAME, user),
                        (Attr.REALM, challenge.get(Attr.REALM)), (Attr.NONCE, challenge.get(Attr.NONCE))):
        allocate.add(attr, value)
    answer = ask(allocate)
    print("allocate", answer.msg_class.name, answer.get(Attr.XOR_RELAYED_ADDRESS) is not None)
    status = open(f"/proc/{server.pid}/status").read()
    print("uid", [line.split()[1] for line in status.splitlines() if line.startswith("Uid:")][0])
finally:
    server.terminate()
    print("exit", server.wait(10))
"""


def _probe_server(chroot: Chroot) -> dict[str, str]:
    chroot.path("/tmp/probe.py").write_text(SERVER_PROBE)
    result = chroot.run(f"unshare --net python3 /tmp/probe.py {HANDBOOK_USER} {HANDBOOK_PASSWORD}")
    return dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)


def _install(chroot: Chroot, built: Path) -> None:
    shutil.copy2(_deb(built), chroot.path("/tmp"))
    chroot.run(f"{APT} update", timeout=APT_TIMEOUT)
    # stdin is /dev/null: a conffile question would fail the installation instead of waiting for an answer.
    chroot.run(f"{APT} install --no-install-recommends ./tmp/{_deb(built).name}", timeout=APT_TIMEOUT)


def _purge_and_check_nothing_is_left(chroot: Chroot) -> None:
    chroot.run(f"{APT} purge pyturn")
    assert chroot.run("dpkg-query -W -f='${db:Status-Abbrev}' pyturn", check=False).stdout.strip() in ("", "un")
    for path in ("/etc/reTurn", "/var/log/reTurnServer", "/etc/logrotate.d/pyturn", "/usr/bin/pyturn",
                 "/lib/systemd/system/pyturn.service", "/etc/systemd/system/multi-user.target.wants/pyturn.service",
                 "/usr/lib/python3/dist-packages/pyturn", "/run/reTurnServer"):
        assert not os.path.lexists(chroot.path(path)), f"{path} is left after purge"
    assert chroot.run("dpkg-statoverride --list", check=False).stdout == ""
    # The account stays, as Debian keeps system accounts (files elsewhere may still be owned by it).
    assert chroot.run("getent passwd return", check=False).returncode == 0


def test_debian_package_keeps_the_handbook_config_through_install_remove_and_purge(
    built: Path, chroot: Chroot
) -> None:
    etc = chroot.path("/etc/reTurn")
    etc.mkdir()
    (etc / "reTurnServer.config").write_text(HANDBOOK_CONFIG)
    (etc / "users.txt").write_text(HANDBOOK_USERS)
    (etc / "users.txt").chmod(0o600)
    before = {name: _fingerprint(etc / name) for name in ("reTurnServer.config", "users.txt")}
    assert chroot.run("getent passwd return", check=False).returncode == 2  # the account is the package's to make

    _install(chroot, built)

    assert chroot.run("pyturn --version").stdout == f"pyturn {pyturn.__version__}\n"
    assert {name: _fingerprint(etc / name) for name in before} == before
    assert not list(etc.glob("*.dpkg-*")) and not list(etc.glob("*.pyturn-keep"))
    unit = chroot.path("/lib/systemd/system/pyturn.service").read_text()
    assert "\nType=notify\n" in unit
    assert "\nExecStart=/usr/bin/pyturn /etc/reTurn/reTurnServer.config --Daemonize=false\n" in unit
    assert os.path.islink(chroot.path("/etc/systemd/system/multi-user.target.wants/pyturn.service"))
    account = chroot.run("getent passwd return").stdout.strip().split(":")
    assert int(account[2]) < 1000 and account[6] == "/usr/sbin/nologin"
    assert chroot.run("id -gn return").stdout.strip() == "return"
    log_dir = chroot.path("/var/log/reTurnServer").stat()
    assert (log_dir.st_uid, log_dir.st_gid, log_dir.st_mode & 0o7777) == (int(account[2]), int(account[3]), 0o750)
    checked = chroot.run("pyturn -c /etc/reTurn/reTurnServer.config --check-config").stdout
    for line in ("UserDatabaseHashedPasswords = true", "TlsTurnPort = 0", "RunAsUser = return",
                 "LogLevel = WARNING", "UserDatabaseFile = /etc/reTurn/users.txt"):
        assert f"\n{line}\n" in f"\n{checked}", line

    probe = _probe_server(chroot)
    assert probe["binding"] == "SUCCESS 127.0.0.1"
    assert probe["challenge"] == "401"
    assert probe["allocate"] == "SUCCESS True"
    assert probe["uid"] == account[2]  # switched to RunAsUser after binding
    assert probe["exit"] == "0"
    assert chroot.path("/var/log/reTurnServer/reTurnServer.log").stat().st_uid == int(account[2])

    chroot.run(f"dpkg -i /tmp/{_deb(built).name}")  # an upgrade (same version): preinst/postinst with a version
    assert {name: _fingerprint(etc / name) for name in before} == before

    chroot.run(f"{APT} remove pyturn")
    assert not chroot.path("/usr/bin/pyturn").exists()
    assert {name: _fingerprint(etc / name) for name in before} == before  # remove keeps the configuration
    assert chroot.run("dpkg-query -W -f='${db:Status-Abbrev}' pyturn").stdout.strip() == "rc"

    _purge_and_check_nothing_is_left(chroot)


def test_debian_package_on_a_fresh_system_installs_its_own_config(built: Path, chroot: Chroot) -> None:
    _install(chroot, built)

    etc = chroot.path("/etc/reTurn")
    assert (etc / "reTurnServer.config").read_bytes() == (DEBIAN / "conf" / "reTurnServer.config").read_bytes()
    assert (etc / "users.txt").read_bytes() == (DEBIAN / "conf" / "users.txt").read_bytes()
    users = (etc / "users.txt").stat()
    group = int(chroot.run("getent group return").stdout.split(":")[2])
    assert (users.st_uid, users.st_gid, users.st_mode & 0o777) == (0, group, 0o640)
    checked = chroot.run("pyturn -c /etc/reTurn/reTurnServer.config --check-config").stdout
    assert "\nTlsTurnPort = 0\n" in checked and "\nUserDatabaseHashedPasswords = true\n" in checked
    conffiles = chroot.run("dpkg-query -W -f='${Conffiles}' pyturn").stdout
    assert "/etc/reTurn/reTurnServer.config" in conffiles and "/etc/reTurn/users.txt" in conffiles
    man = chroot.run("ls /usr/share/man/man8 /usr/share/man/man5").stdout
    assert "pyturn.8.gz" in man and "reTurnServer.config.5.gz" in man

    _purge_and_check_nothing_is_left(chroot)


def _stand_in_resiprocate_turn_server(directory: Path) -> Path:
    """A package named and laid out like resiprocate-turn-server (gone from Debian 12): its /etc/reTurn conffiles
    and /usr/sbin/reTurnServer, for the takeover."""
    tree = directory / "resiprocate-turn-server"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: resiprocate-turn-server\nVersion: 1:1.12.0-1\nArchitecture: all\n"
        "Maintainer: pyturn tests <tests@example.org>\nDescription: stand-in for the reTurn package\n"
    )
    (tree / "DEBIAN" / "conffiles").write_text("/etc/reTurn/reTurnServer.config\n/etc/reTurn/users.txt\n")
    (tree / "etc" / "reTurn").mkdir(parents=True)
    (tree / "etc" / "reTurn" / "reTurnServer.config").write_text(HANDBOOK_CONFIG)
    (tree / "etc" / "reTurn" / "users.txt").write_text("# users\n")
    (tree / "usr" / "sbin").mkdir(parents=True)
    (tree / "usr" / "sbin" / "reTurnServer").write_text("#!/bin/sh\nexit 0\n")
    (tree / "usr" / "sbin" / "reTurnServer").chmod(0o755)
    deb = directory / "resiprocate-turn-server_1.12.0-1_all.deb"
    _run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)], STEP_TIMEOUT)
    return deb


def test_debian_package_takes_over_an_installed_resiprocate_turn_server(
    built: Path, chroot: Chroot, tmp_path: Path
) -> None:
    shutil.copy2(_stand_in_resiprocate_turn_server(tmp_path), chroot.path("/tmp"))
    chroot.run("dpkg -i /tmp/resiprocate-turn-server_1.12.0-1_all.deb")
    etc = chroot.path("/etc/reTurn")
    # The administrator's edits: a user added, the log level changed.
    (etc / "users.txt").write_text(HANDBOOK_USERS)
    config = (etc / "reTurnServer.config").read_text()
    (etc / "reTurnServer.config").write_text(config.replace("LoggingLevel = WARNING", "LoggingLevel = INFO"))
    before = {name: _fingerprint(etc / name) for name in ("reTurnServer.config", "users.txt")}

    _install(chroot, built)

    assert chroot.run("dpkg-query -W -f='${db:Status-Abbrev}' resiprocate-turn-server").stdout.strip() == "rc"
    assert {name: _fingerprint(etc / name) for name in before} == before
    assert not list(etc.glob("*.dpkg-*")) and not list(etc.glob("*.pyturn-keep"))
    assert chroot.run("dpkg-query -S /etc/reTurn/reTurnServer.config").stdout.startswith("pyturn: ")
    assert not chroot.path("/usr/sbin/reTurnServer").exists()
    checked = chroot.run("pyturn -c /etc/reTurn/reTurnServer.config --check-config").stdout
    assert "\nLogLevel = INFO\n" in checked
    # Purging the replaced package no longer touches the files it handed over.
    chroot.run("dpkg --purge resiprocate-turn-server")
    assert {name: _fingerprint(etc / name) for name in before} == before
    assert _probe_server(chroot)["allocate"] == "SUCCESS True"

    _purge_and_check_nothing_is_left(chroot)
