"""A Docker engine for the image test, on a machine where none may run and no registry is reachable.

:class:`Engine` uses the engine that answers ``docker info``; else, as root, it installs Docker's
Debian packages when they are missing and starts ``dockerd`` itself, and stops it again (by pid)
in :meth:`Engine.close`. :meth:`Engine.ensure_base_image` makes ``FROM python:3.11-slim``
resolve without a registry, as shared/notes/docker.md describes: a Debian bookworm root file
system from ``debootstrap`` (its tarball cached under :data:`CACHE`, so that only the first run
pays for it), imported as ``local/debian:bookworm``, plus Debian's Python 3.11 in a venv first
on PATH, tagged ``python:3.11-slim``. An image of that name already there is used as it is.

Whatever keeps the engine or the base image from existing raises :class:`EngineUnavailable`,
which the test turns into a skip with its reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

BASE_IMAGE = "python:3.11-slim"
DEBIAN_IMAGE = "local/debian:bookworm"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
CACHE = Path(os.environ.get("BIS_DOCKER_CACHE")
             or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "basic_inference_server" / "docker")
HOST_CA_FOLDER = Path("/usr/local/share/ca-certificates")
STAND_IN_LABEL = "basic_inference_server.stand-in"

STAND_IN_DOCKERFILE = f"""\
FROM {DEBIAN_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \\
    && apt-get install -y --no-install-recommends python3 python3-venv \\
    && rm -rf /var/lib/apt/lists/* \\
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH LANG=C.UTF-8 PIP_CERT=/etc/ssl/certs/ca-certificates.crt
LABEL {STAND_IN_LABEL}="Debian {SUITE}'s Python 3.11 standing in for {BASE_IMAGE} (tests/docker/dockerenv.py)"
"""


class EngineUnavailable(Exception):
    """No Docker engine (or no base image) can be had on this machine; the message says why."""


class DockerError(Exception):
    """A docker command failed; the message holds the command and the end of its output."""


def tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run(args: Sequence[str], timeout: float, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run a command, capturing its output; DockerError when ``check`` and it fails or times out."""
    try:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        raise DockerError(f"{' '.join(args)} did not finish within {timeout:g}s:\n{tail(output)}") from None
    if check and done.returncode != 0:
        raise DockerError(f"{' '.join(args)} exited with {done.returncode}:\n{tail(done.stdout + done.stderr)}")
    return done


def apt_install(*packages: str) -> None:
    """Install Debian packages (root only); refresh the package lists once if the first try fails."""
    command = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if run(command, timeout=300, check=False, env=env).returncode == 0:
        return
    try:
        run(["apt-get", "update"], timeout=300, env=env)
        run(command, timeout=300, env=env)
    except DockerError as exc:
        raise EngineUnavailable(f"cannot install {', '.join(packages)} with apt-get: {exc}") from None


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 .sources files or sources.list)."""
    texts = [p.read_text(encoding="utf-8", errors="replace")
             for p in sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))]
    for text in texts:
        for stanza in re.split(r"\n\s*\n", text):
            suites = re.search(r"^Suites:\s*(.+)$", stanza, flags=re.MULTILINE)
            uris = re.search(r"^URIs:\s*(\S+)", stanza, flags=re.MULTILINE)
            if suites and uris and SUITE in suites[1].split():
                return uris[1]
    try:
        sources = Path("/etc/apt/sources.list").read_text(encoding="utf-8", errors="replace")
    except OSError:
        sources = ""
    found = re.search(rf"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+{SUITE}\s", sources, flags=re.MULTILINE)
    return found[1] if found else DEFAULT_MIRROR


def unmount_below(folder: Path) -> None:
    """Unmount what a failed debootstrap may have left mounted inside ``folder`` (proc, sys)."""
    try:
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return
    prefix = str(folder.resolve()) + "/"
    for mount in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        run(["umount", "-l", mount], timeout=30, check=False)


class Engine:
    """The Docker engine the test talks to, and whether this process started it.

    Args:
        workdir: where the daemon's log goes when it is started here.
    """

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.daemon: subprocess.Popen | None = None
        self.daemon_log = workdir / "dockerd.log"
        self.docker_bin = "docker"
        self.notes: list[str] = []  # what was done to get here, with timings, for the test's output

    # -- the engine ----------------------------------------------------------------------------
    def start(self) -> None:
        """Find or start an engine; EngineUnavailable with the reason when neither works."""
        started = time.monotonic()
        is_root = os.geteuid() == 0
        if shutil.which("docker") is None:
            if not is_root:
                raise EngineUnavailable("no docker client here, and installing one (apt-get) needs root")
            apt_install("docker.io")
            self.notes.append(f"installed docker.io in {time.monotonic() - started:.0f}s")
        self.docker_bin = shutil.which("docker") or "docker"
        answers, output = self._answers()
        if answers:
            self.notes.append("used the Docker engine already running")
            return
        if not is_root:
            raise EngineUnavailable(f"`docker info` fails ({tail(output, 3)}) and starting dockerd needs root")
        if shutil.which("dockerd") is None:
            apt_install("docker.io")
            self.notes.append(f"installed docker.io in {time.monotonic() - started:.0f}s")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.daemon_log, "wb") as log:
            # Its own session: a Ctrl-C on the test reaches the test, whose teardown then stops it.
            self.daemon = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                log_tail = tail(self.daemon_log.read_text(errors="replace"), 15)
                self.daemon = None
                raise EngineUnavailable(f"dockerd exited at start (see its log):\n{log_tail}")
            if self._answers()[0]:
                self.notes.append(f"started dockerd (pid {self.daemon.pid}) in {time.monotonic() - started:.1f}s")
                return
            time.sleep(0.2)
        self.close()
        raise EngineUnavailable("dockerd did not answer `docker info` within 60s")

    def _answers(self) -> tuple[bool, str]:
        try:
            done = subprocess.run([self.docker_bin, "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                                  text=True, timeout=15)
        except subprocess.TimeoutExpired:
            return False, "docker info timed out"
        return done.returncode == 0, done.stdout + done.stderr

    @property
    def started_here(self) -> bool:
        return self.daemon is not None

    def close(self) -> None:
        """Stop the daemon if this process started it (SIGTERM, SIGKILL after 30 s)."""
        if self.daemon is None:
            return
        self.daemon.terminate()
        try:
            self.daemon.wait(30)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            self.daemon.wait(10)
        self.daemon = None

    # -- commands ------------------------------------------------------------------------------
    def docker(self, *args: str, timeout: float = 60, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        return run([self.docker_bin, *args], timeout=timeout, check=check, **kwargs)

    def image_exists(self, image: str) -> bool:
        return self.docker("image", "inspect", image, check=False).returncode == 0

    # -- the base image ------------------------------------------------------------------------
    def ensure_base_image(self) -> None:
        """Make ``python:3.11-slim`` exist locally (see the module docstring)."""
        if self.image_exists(BASE_IMAGE):
            self.notes.append(f"{BASE_IMAGE} already present")
            return
        started = time.monotonic()
        try:
            if not self.image_exists(DEBIAN_IMAGE):
                tarball = CACHE / f"debian-{SUITE}-minbase.tar"
                if not tarball.exists():
                    self._debootstrap(tarball)
                self.docker("import", str(tarball), DEBIAN_IMAGE, timeout=300)
            with tempfile.TemporaryDirectory(prefix="bis-stand-in-") as context:
                dockerfile = STAND_IN_DOCKERFILE
                certs = sorted(HOST_CA_FOLDER.glob("*.crt"))
                if certs:
                    # HTTPS leaves through an intercepting proxy here: pip in the build must trust it.
                    (Path(context) / "certs").mkdir()
                    for cert in certs:
                        shutil.copy(cert, Path(context) / "certs" / cert.name)
                    dockerfile = dockerfile.replace(
                        "ENV DEBIAN_FRONTEND=noninteractive\n",
                        "ENV DEBIAN_FRONTEND=noninteractive\nCOPY certs/ /usr/local/share/ca-certificates/\n"
                        "RUN update-ca-certificates\n")
                (Path(context) / "Dockerfile").write_text(dockerfile, encoding="utf-8")
                self.docker("build", "-t", BASE_IMAGE, context, timeout=420)
        except DockerError as exc:
            raise EngineUnavailable(f"cannot build the stand-in {BASE_IMAGE} (no registry here): {exc}") from None
        self.notes.append(f"built the stand-in {BASE_IMAGE} in {time.monotonic() - started:.0f}s")

    def _debootstrap(self, tarball: Path) -> None:
        if os.geteuid() != 0:
            raise EngineUnavailable(f"no {BASE_IMAGE} image, and building one with debootstrap needs root")
        if shutil.which("debootstrap") is None:
            apt_install("debootstrap")
        started = time.monotonic()
        tarball.parent.mkdir(parents=True, exist_ok=True)
        rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=tarball.parent))
        partial = tarball.with_suffix(".partial")
        try:
            run(["debootstrap", "--variant=minbase", "--include=ca-certificates", SUITE, str(rootfs),
                 debian_mirror()], timeout=600)
            run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."], timeout=300)
            partial.replace(tarball)
        except DockerError as exc:
            raise EngineUnavailable(f"debootstrap of Debian {SUITE} failed: {exc}") from None
        finally:
            unmount_below(rootfs)
            shutil.rmtree(rootfs, ignore_errors=True)
            partial.unlink(missing_ok=True)
        self.notes.append(f"debootstrap {SUITE} into {tarball} in {time.monotonic() - started:.0f}s")
