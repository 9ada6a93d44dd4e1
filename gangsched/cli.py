"""The `gangsched` command. Each subcommand's module adds its own arguments and runs it."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from gangsched.model import ModelError
from gangsched.profile import ProfileError

# Optional dependencies, by the extra that installs them; the scheduler itself (`gangsched run`) needs none.
EXTRAS = {"tqdm": "sim", "matplotlib": "sim", "cryptography": "devcluster"}


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line naming the option (not the whole usage block), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from gangsched import demo, status
    from gangsched.devcluster import cli as devcluster
    from gangsched.deviceplugin import cli as deviceplugin
    from gangsched.extender import run as extender
    from gangsched.live import run
    from gangsched.sim import packing, timed

    parser = Parser(prog="gangsched", description="GPU-aware gang scheduler for Kubernetes")
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="replay a cluster trace through the scheduling core")
    modes = sim.add_subparsers(dest="mode", required=True)
    packing.add_arguments(modes.add_parser("packing", help="FGD's packing experiment on the Alibaba 2023 trace"))
    timed.add_arguments(modes.add_parser("time", help="event-driven replay of the Philly job trace"))
    run.add_arguments(sub.add_parser("run", help="schedule pods on a Kubernetes cluster (secondary scheduler)"))
    deviceplugin.add_arguments(sub.add_parser("device-plugin", help="the kubelet GPU device plugin that hands "
                                              "containers the GPUs gangsched picked (a DaemonSet)"))
    extender.add_arguments(sub.add_parser("extender", help="gang scheduling inside kube-scheduler, as its extender"))
    devcluster.add_arguments(sub.add_parser("devcluster", help="a local control plane: etcd, kube-apiserver, KWOK"))
    status.add_arguments(sub.add_parser("status", help="waiting gangs (queue position, reason), running gangs and "
                                        "the GPU map, from the API server (also `kubectl gangsched`)"))
    demo.add_arguments(sub.add_parser("demo", help="two 4-worker TF jobs on 6 GPUs: gangsched vs kube-scheduler"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ModelError, ProfileError, FileNotFoundError) as e:
        print(f"gangsched: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        module = (e.name or "").partition(".")[0]
        if module not in EXTRAS:
            raise  # a missing core dependency or a bug: the traceback is the useful report
        extra = EXTRAS[module]
        command = " ".join(filter(None, (args.command, getattr(args, "mode", None), getattr(args, "action", None))))
        print(f"gangsched: error: `gangsched {command}` needs {module}, from the '{extra}' extra: "
              f"pip install 'gangsched[{extra}]'", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
