"""The image's install steps, without Docker: the Dockerfile and what it builds, kept in step.

There is no Docker here, so this test performs the Dockerfile's steps itself:
- builder stage: copy exactly what its COPY lines copy into a clean folder and build the wheel there
  (`pip wheel --no-deps`, as the Dockerfile does);
- final stage: install that wheel, not editable, into a fresh virtualenv, then run the installed
  `clip-worker --version` and `clip-worker check` (with the tiny test model, the harness's real Kafka
  broker and S3 endpoint), from a folder outside the repository and with no PYTHONPATH, so nothing
  can come from the source tree.

Two departures from the image, both deliberate. The wheel is built with --no-build-isolation (setuptools
from this virtualenv instead of a download). And it is installed with --no-deps, with this virtualenv's
site-packages made visible to the fresh one by a .pth file instead of downloading torch and the rest
again: the dependencies are the same pinned ones either way, and what is under test is that the wheel
ships the package, its schemas and its entry point. A .pth *path* line only appends the folder to
sys.path; the .pth files inside it (this virtualenv's editable install of the source tree among them)
are not processed, so the source tree stays out of reach and `worker` can only come from the wheel.

Static checks tie the rest of the Dockerfile to the project: the CUDA base to the pinned torch, the
user to the chart's runAsUser, the entry point to the console script, the port to the metrics port,
and `make image`'s tag to the chart's default image.
"""

from __future__ import annotations

import email
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from harness.kafka_broker import KafkaBroker
from harness.models import TINY_MODEL_NAME, model_config_dir
from harness.s3_server import S3Server
from worker.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
CHART = ROOT / "helm" / "clip-embedding-worker"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]


# -- reading the Dockerfile ----------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def _global_args() -> dict[str, str]:
    """The ARGs before the first FROM, with their defaults."""
    args: dict[str, str] = {}
    for instruction, rest in _instructions():
        if instruction == "FROM":
            break
        if instruction == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args


def _substitute(text: str, args: dict[str, str]) -> str:
    """Docker's ${NAME}, $NAME and ${NAME:+word} (word when NAME is set and not empty)."""
    text = re.sub(r"\$\{(\w+):\+([^}]*)\}", lambda m: m.group(2) if args[m.group(1)] else "", text)
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], text)


def _stages(**build_args: str) -> list[dict[str, Any]]:
    """Each FROM with its image (global ARGs substituted, a FROM of an earlier stage resolved to that
    stage's image), alias and instructions."""
    args = {**_global_args(), **build_args}
    stages: list[dict[str, Any]] = []
    for instruction, rest in _instructions():
        if instruction == "ARG" and not stages:
            continue
        if instruction == "FROM":
            words = rest.split()
            image = _substitute(words[0], args)
            earlier = [stage for stage in stages if stage["alias"] == image]
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append({"image": earlier[0]["image"] if earlier else image, "from_stage": image if earlier else None,
                           "alias": alias, "instructions": []})
        else:
            assert stages, f"{instruction} before any FROM"
            stages[-1]["instructions"].append((instruction, rest))
    return stages


def _builder() -> dict[str, Any]:
    (builder,) = [stage for stage in _stages() if stage["alias"] == "builder"]
    return builder


def _final(**build_args: str) -> dict[str, Any]:
    final: dict[str, Any] = _stages(**build_args)[-1]
    return final


def _runs(stage: dict[str, Any]) -> list[str]:
    return [rest for instruction, rest in stage["instructions"] if instruction == "RUN"]


def _last(stage: dict[str, Any], instruction: str) -> str:
    found = [rest for name, rest in stage["instructions"] if name == instruction]
    assert found, f"no {instruction} in the stage FROM {stage['image']}"
    return found[-1]


def _builder_copies() -> list[tuple[list[str], str]]:
    """The builder's COPY lines from the build context: (sources, destination)."""
    copies = []
    for instruction, rest in _builder()["instructions"]:
        if instruction == "COPY":
            words = shlex.split(rest)
            assert not any(word.startswith("--") for word in words), f"COPY flags not handled here: {rest}"
            copies.append((words[:-1], words[-1]))
    return copies


# -- the Dockerfile, statically ------------------------------------------------------------------


def _install_run() -> str:
    (install,) = [run for run in _runs(_final()) if "pip install" in run]
    return install


def test_dockerfile_builds_a_wheel_and_installs_it_not_editable_after_the_locked_dependencies() -> None:
    (build,) = [run for run in _runs(_builder()) if "pip wheel" in run]
    assert "--no-deps" in build.split(), "the builder makes the worker's wheel only; deps come from the lock"
    wheel_dir = build.split("--wheel-dir", 1)[1].split()[0]
    install = _install_run()
    # The final stage installs the builder's wheel file itself: not the source tree, not editable.
    assert f"{wheel_dir}/*.whl" in install
    assert f"from=builder,source={wheel_dir}" in install or any(
        instruction == "COPY" and "--from=builder" in rest and wheel_dir in rest
        for instruction, rest in _final()["instructions"]
    ), "the final stage must take the wheel from the builder stage"
    assert not {"-e", "--editable", "."} & set(install.split()), install
    # The dependencies from the lock, every file checked against its hash, before the wheel, which then
    # needs nothing from the index; `pip check` proves the set complete.
    steps = [step.strip() for step in install.split("&&")]
    locked = [i for i, step in enumerate(steps) if "--require-hashes" in step and "-r " in step]
    wheel = [i for i, step in enumerate(steps) if f"{wheel_dir}/*.whl" in step]
    check = [i for i, step in enumerate(steps) if step.endswith("-m pip check")]
    assert locked and wheel and check and locked[0] < wheel[0] < check[0], steps
    assert "--no-deps" in steps[wheel[0]].split() and "--no-deps" in steps[locked[0]].split()
    assert "lock=/opt/locks/requirements.lock" in install
    copies = [rest for instruction, rest in _final()["instructions"] if instruction == "COPY"]
    assert "requirements*.lock /opt/locks/" in copies
    # Into its own virtualenv, which is first on PATH so `clip-worker` is the installed console script.
    venv = re.search(r"-m venv (\S+)", install)
    assert venv and f"{venv.group(1)}/bin/python -m pip install" in install
    envs = [rest for instruction, rest in _final()["instructions"] if instruction == "ENV"]
    assert any(f"PATH={venv.group(1)}/bin:" in env for env in envs), envs


# -- the lock file -------------------------------------------------------------------------------

LOCK = ROOT / "requirements.lock"


def _locked() -> dict[str, tuple[str, list[str]]]:
    """requirements.lock as {normalised name: (version, sha256 hashes)}."""
    locked = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text()):
        pin = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", block)
        if pin:
            locked[canonicalize_name(pin[1])] = (pin[2], re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return locked


def test_lock_pins_every_dependency_of_pyproject_at_the_version_pyproject_pins() -> None:
    locked = _locked()
    assert locked, "requirements.lock pins nothing"
    wrong = {}
    for text in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name not in locked:
            wrong[name] = "not in requirements.lock"
            continue
        version = locked[name][0]
        pinned = [spec.version for spec in requirement.specifier if spec.operator == "=="]
        if pinned and pinned != [version]:
            wrong[name] = f"pyproject.toml pins {pinned[0]}, the lock {version}"
        elif not requirement.specifier.contains(version):
            wrong[name] = f"the lock's {version} is outside pyproject.toml's {requirement.specifier}"
    assert not wrong, f"requirements.lock is stale, run `make lock`: {wrong}"


def test_lock_checks_every_package_by_hash_and_names_the_command_that_made_it() -> None:
    locked = _locked()
    unhashed = sorted(name for name, (_, hashes) in locked.items() if not hashes)
    assert not unhashed, f"pip --require-hashes refuses a lock with unhashed packages: {unhashed}"
    assert "make lock" in LOCK.read_text().split("\n", 3)[1], "the header says how to regenerate it"
    # The image's torch is the CUDA build the base image is for (see the CUDA test below).
    assert locked["torch"][0] == metadata.version("torch").split("+")[0]
    assert "cuda-toolkit" in locked, "torch from PyPI brings its CUDA libraries as packages"


def test_lock_is_the_suites_own_dependency_set() -> None:
    # What the suite runs is what the image installs: every locked package is installed here at the
    # locked version (the suite's virtualenv has the dev extras on top).
    differ = {}
    for name, (version, _) in _locked().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "not installed"
        if installed.split("+")[0] != version:
            differ[name] = (version, installed)
    assert not differ, f"locked (left) against installed here (right): {differ}"


def test_dockerfile_copies_only_what_the_dockerignore_lets_through() -> None:
    # .dockerignore is an allow-list; a COPY of a path it leaves out would fail the docker build.
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    assert "*" in lines, ".dockerignore should exclude everything by default (.venv, .cache, .git are large)"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    sources = {source.rstrip("/") for sources, _ in _builder_copies() for source in sources}
    assert sources <= allowed, f"copied but ignored: {sorted(sources - allowed)}"
    assert "requirements*.lock" in allowed, "the final stage copies the locks"
    # And the wheel's inputs are all there: the package, its schemas (worker/schemas links to them),
    # and the two files pyproject.toml names.
    assert {"pyproject.toml", "README.md", "worker", "schemas"} <= sources
    assert PYPROJECT["project"]["readme"] == "README.md"


def _cuda_of(image: str) -> str:
    flavours = "base|runtime|cudnn-runtime"
    base = re.fullmatch(rf"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-({flavours})-ubuntu\d+\.\d+(@sha256:[0-9a-f]{{64}})?", image)
    assert base, f"the final stage should be an nvidia/cuda base or runtime image, not {image}"
    return ".".join(base.group(1, 2, 3))


def test_dockerfile_cuda_base_is_the_cuda_the_pinned_torch_was_built_for() -> None:
    cuda = _cuda_of(_final()["image"])
    assert _final()["from_stage"] == f"cuda-{_global_args()['CUDA']}"
    pins = [dep for dep in PYPROJECT["project"]["dependencies"] if dep.startswith("torch==")]
    assert pins == [f"torch=={metadata.version('torch')}"], "the suite runs the pinned torch"
    torch = metadata.distribution("torch")
    # The torch build's own CUDA (torch/version.py), and the CUDA toolkit release its wheel requires.
    version_py = Path(str(torch.locate_file("torch/version.py"))).read_text()
    built_for = re.search(r"^cuda: .*'([\d.]+)'", version_py, re.MULTILINE)
    assert built_for, "this torch is not a CUDA build"
    assert cuda.rsplit(".", 1)[0] == built_for.group(1), f"CUDA {cuda} image for a torch built for {built_for[1]}"
    assert _global_args()["CUDA"] == built_for.group(1), "the default CUDA argument is the PyPI torch's"
    toolkit = [req for req in torch.requires or [] if req.startswith("cuda-toolkit")]
    if toolkit:
        assert f"=={cuda}" in toolkit[0], f"torch requires {toolkit[0]}; the image has CUDA {cuda}"


def test_each_cuda_argument_builds_on_the_nvidia_cuda_base_of_that_release() -> None:
    variants = [stage for stage in _stages() if (stage["alias"] or "").startswith("cuda-")]
    assert {stage["alias"] for stage in variants} >= {"cuda-13.2", "cuda-12.8"}
    for stage in variants:
        assert stage["instructions"] == [], f"{stage['alias']} only names a base image"
        release = stage["alias"].removeprefix("cuda-")
        assert _cuda_of(stage["image"]).rsplit(".", 1)[0] == release, (stage["alias"], stage["image"])
        final = _final(CUDA=release)
        assert final["from_stage"] == stage["alias"] and final["image"] == stage["image"]
    # Another CUDA than PyPI's torch takes torch from the PyTorch index's build for it, or its own lock.
    install = _install_run()
    assert 'torch_index="https://download.pytorch.org/whl/cu$(echo "$CUDA" | tr -d .)"' in install
    assert 'variant="/opt/locks/requirements-cu$(echo "$CUDA" | tr -d .).lock"' in install
    # Everything but the torch family still comes from the lock by hash (awk drops only those blocks).
    script = re.search(r"awk '([^']*)'", install)
    assert script
    kept = subprocess.run(["awk", script.group(1), str(LOCK)], capture_output=True, text=True, check=True).stdout
    kept_names = {canonicalize_name(m) for m in re.findall(r"^([A-Za-z0-9_.-]+)==", kept, re.MULTILINE)}
    dropped = set(_locked()) - kept_names
    assert "torch" in dropped and "torchvision" in dropped and "pillow" in kept_names
    assert all(re.match(r"torch|torchvision|triton|nvidia-|cuda-", name) for name in dropped), sorted(dropped)
    assert kept.count("--hash=sha256:") == sum(len(_locked()[name][1]) for name in kept_names)


def test_base_images_take_an_optional_digest_and_the_defaults_are_digests_or_empty() -> None:
    args = _global_args()
    for instruction, rest in _instructions():
        if instruction != "FROM" or rest.split()[0].startswith("cuda-$"):
            continue
        image = rest.split()[0]
        digest = re.fullmatch(r"\$\{(\w+)_IMAGE\}\$\{(\w+)_DIGEST:\+@\}\$\{(\w+)_DIGEST\}", image)
        assert digest and digest.group(1) == digest.group(2) == digest.group(3), f"FROM {image}: no digest argument"
        assert re.fullmatch(r"|sha256:[0-9a-f]{64}", args[f"{digest.group(1)}_DIGEST"])
        pinned = _substitute(image, {**args, f"{digest.group(1)}_DIGEST": "sha256:" + "0" * 64})
        assert pinned == f"{args[digest.group(1) + '_IMAGE']}@sha256:{'0' * 64}"
    assert "docker buildx imagetools inspect" in DOCKERFILE.read_text(), "how to read a digest"


def make_dry_run(*args: str) -> subprocess.CompletedProcess[str]:
    """`make -n ...`: the commands only (Docker is not needed, nor here). Not as a sub-make of `make
    test`, whose flags would have it print the directories it enters among them."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(["make", "--no-print-directory", "-n", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_image_carries_oci_labels_from_build_arguments_that_make_image_passes() -> None:
    labels = " ".join(rest for instruction, rest in _final()["instructions"] if instruction == "LABEL")
    for key, value in [("version", "${VERSION}"), ("revision", "${REVISION}"), ("source", "${SOURCE}")]:
        assert f'org.opencontainers.image.{key}="{value}"' in labels
    assert 'org.opencontainers.image.title="clip-embedding-worker"' in labels
    assert f'org.opencontainers.image.description="{PYPROJECT["project"]["description"]}"' in labels
    done = make_dry_run("image", "CUDA=12.8", "PRETRAINED=", "REVISION=abc123")
    assert done.returncode == 0, done.stderr
    command = done.stdout.replace("\\\n", " ").split()
    for arg in (f"VERSION={VERSION}", "REVISION=abc123", "CUDA=12.8", "PRETRAINED="):
        assert arg in command, (arg, command)
    assert "git rev-parse HEAD" in (ROOT / "Makefile").read_text()


def test_pretrained_build_argument_fetches_the_weights_into_the_image_s_model_cache() -> None:
    args = {rest.partition("=")[0]: rest.partition("=")[2]
            for instruction, rest in _final()["instructions"] if instruction == "ARG"}
    assert args["PRETRAINED"] == "", "empty: no weights in the image"
    envs = " ".join(rest for instruction, rest in _final()["instructions"] if instruction == "ENV")
    assert "CLIP_WORKER_MODEL__CACHE_DIR=/opt/models" in envs.split()
    (fetch,) = [run for run in _runs(_final()) if "fetch-model" in run]
    assert 'if [ -n "$PRETRAINED" ]' in fetch and "clip-worker fetch-model" in fetch
    assert 'CLIP_WORKER_MODEL__PRETRAINED="$PRETRAINED"' in fetch
    assert "chown -R 10001:10001 /opt/models" in fetch
    # Secrets for s3:// come as a build secret mount, never as an ARG (ARGs stay in the image's history).
    assert "--mount=type=secret,id=aws" in fetch and not any("AWS" in name for name in args)


def test_dockerfile_python_is_the_one_the_suite_runs() -> None:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert _builder()["image"].startswith(f"python:{python}-")
    assert any(f"python{python} " in run + " " and f"python{python}-venv" in run for run in _runs(_final()))
    assert f"python{python} -m venv" in " ".join(_runs(_final()))
    minimum = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    assert tuple(map(int, python.split("."))) >= tuple(map(int, minimum.split(".")))


def test_dockerfile_runs_clip_worker_as_the_chart_s_non_root_user_on_the_metrics_port() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    user = _last(_final(), "USER")
    uid, _, gid = user.partition(":")
    # Numeric, so that the kubelet can verify runAsNonRoot against the image; the uid the chart runs as.
    assert uid.isdigit() and int(uid) != 0, f"USER {user} is root or not numeric"
    assert int(uid) == values["podSecurityContext"]["runAsUser"]
    assert int(gid) == values["podSecurityContext"]["runAsGroup"]
    entrypoint = json.loads(_last(_final(), "ENTRYPOINT"))
    assert entrypoint == ["clip-worker"] == values["command"]
    assert PYPROJECT["project"]["scripts"]["clip-worker"] == "worker.cli:main"
    assert _last(_final(), "EXPOSE").split() == [str(Settings().pipeline.metrics_port)]


def test_make_image_tags_the_image_the_chart_deploys_by_default() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart["appVersion"] == VERSION, "the chart's appVersion is the worker's version, the image's tag"
    assert values["image"]["tag"] == "", "an empty tag means appVersion (see _helpers.tpl)"
    done = make_dry_run("image")
    assert done.returncode == 0, done.stderr
    command = done.stdout.replace("\\\n", " ").split()
    assert command[:4] == ["docker", "build", "-t", f"{values['image']['repository']}:{VERSION}"], command
    assert command[-1] == "."


# -- the Dockerfile's steps, performed ------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The builder stage: the build context as its COPY lines copy it, then `pip wheel --no-deps`."""
    src = tmp_path_factory.mktemp("docker-src")
    for sources, destination in _builder_copies():
        target = src / destination
        for source in sources:
            path = ROOT / source
            if path.is_dir():
                # symlinks=True: worker/schemas is a link to ../schemas, as Docker's COPY keeps it.
                shutil.copytree(path, target, symlinks=True, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / path.name)
    out = tmp_path_factory.mktemp("wheels")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", str(out), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = out.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The final stage: a fresh virtualenv with the wheel installed in it (see the module docstring)."""
    venv = tmp_path_factory.mktemp("image-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True, timeout=60).stdout.strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (purelib / "_main_venv.pth").write_text("".join(f"{path}\n" for path in sorted(ours)))
    # This virtualenv's pip, run by the fresh interpreter, installs into the fresh virtualenv.
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--no-cache-dir", str(wheel)],
        capture_output=True, text=True, timeout=300, env=_clean_env(venv),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return venv


def _clean_env(venv: Path, **extra: str) -> dict[str, str]:
    """No PYTHONPATH, no CLIP_WORKER_* from the caller, the fresh virtualenv first on PATH."""
    return {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(venv), "LANG": "C.UTF-8", **extra}


def test_wheel_ships_the_package_its_schemas_and_its_entry_point_and_nothing_else(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        dist_info = f"clip_embedding_worker-{VERSION}.dist-info"
        assert {name.split("/", 1)[0] for name in names} == {"worker", dist_info}, "no tests, harness, bench"
        shipped = {name.removeprefix("worker/schemas/") for name in names if name.startswith("worker/schemas/")}
        expected = {path.name for path in (ROOT / "schemas").iterdir() if path.suffix in {".avsc", ".json"}}
        assert expected and expected <= shipped, f"schemas missing from the wheel: {sorted(expected - shipped)}"
        packages = {str(init.relative_to(ROOT)) for init in (ROOT / "worker").rglob("__init__.py")}
        assert packages <= set(names), f"packages missing from the wheel: {sorted(packages - set(names))}"
        assert {f"worker/cli/{name}.py" for name in ("__init__", "run", "check", "embed", "enqueue", "replay")} <= set(
            names), "the command line package, each command's module with it"
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
        assert re.search(r"^clip-worker = worker\.cli:main$", entry_points, re.MULTILINE), entry_points
        # The image installs the wheel with its dependencies: they must be the pinned ones.
        requires = email.message_from_bytes(archive.read(f"{dist_info}/METADATA")).get_all("Requires-Dist") or []
        pinned = [req for req in requires if "extra ==" not in req]
        assert sorted(pinned) == sorted(PYPROJECT["project"]["dependencies"])


def test_installed_clip_worker_prints_its_version_from_outside_the_repository(installed: Path) -> None:
    done = subprocess.run([str(installed / "bin" / "clip-worker"), "--version"], cwd=installed,
                          capture_output=True, text=True, timeout=120, env=_clean_env(installed))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == VERSION, "the version comes from the installed distribution's metadata"
    # The package imported is the wheel's copy, not the source tree (nor its editable install).
    where = subprocess.run(
        [str(installed / "bin" / "python"), "-c",
         "import worker, worker.cli, importlib.resources as r; print(worker.__file__);"
         "print(sorted(p.name for p in r.files('worker.schemas').iterdir()))"],
        cwd=installed, capture_output=True, text=True, timeout=120, env=_clean_env(installed),
    )
    assert where.returncode == 0, where.stderr
    package, schemas = where.stdout.splitlines()
    assert Path(package).is_relative_to(installed) and not Path(package).is_relative_to(ROOT), package
    assert "image-embedding.avsc" in schemas


def test_installed_clip_worker_check_passes_against_a_real_broker_and_s3_with_the_tiny_model(
    installed: Path,
    tiny_checkpoint: Path,
    kafka_broker: KafkaBroker,
    topic_factory: Callable[..., str],
    s3_server: S3Server,
    s3_bucket: str,
) -> None:
    # `check` asks the broker, the three topics, the consumer group and each allowed S3 source, then
    # loads the model: all of them must answer for it to exit 0, so the test gives it real ones.
    env = _clean_env(
        installed,
        **s3_server.env(),  # credentials and endpoint for boto3, as for a worker subprocess
        CLIP_WORKER_KAFKA__BOOTSTRAP_SERVERS=kafka_broker.bootstrap_servers,
        CLIP_WORKER_KAFKA__INPUT_TOPIC=topic_factory(),
        CLIP_WORKER_KAFKA__OUTPUT_TOPIC=topic_factory(),
        CLIP_WORKER_KAFKA__DEAD_LETTER_TOPIC=topic_factory(),
        CLIP_WORKER_KAFKA__GROUP_ID=f"g-{s3_bucket}",
        CLIP_WORKER_S3__ENDPOINT_URL=s3_server.endpoint_url,
        CLIP_WORKER_S3__ALLOWED_SOURCES=json.dumps([s3_bucket]),
        CLIP_WORKER_MODEL__MODEL_NAME=TINY_MODEL_NAME,
        CLIP_WORKER_MODEL__PRETRAINED=str(tiny_checkpoint),
        # The tiny model's OpenCLIP config is a data file of the test harness, read by path.
        CLIP_WORKER_MODEL__MODEL_CONFIG_DIR=str(model_config_dir()),
        CLIP_WORKER_MODEL__DEVICE="cpu",
    )
    assert not any(name.startswith("PYTHON") for name in env)
    done = subprocess.run([str(installed / "bin" / "clip-worker"), "check"], cwd=installed,
                          capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    dim = json.loads((model_config_dir() / f"{TINY_MODEL_NAME}.json").read_text())["embed_dim"]
    model_line = rf"^model {re.escape(TINY_MODEL_NAME)}\b.*\bOK\b.* on cpu, dim {dim}, field image_clip_emb_tiny_vit$"
    assert re.search(model_line, done.stdout, re.MULTILINE), done.stdout
