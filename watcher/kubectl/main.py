"""``kubectl-lpm``: the kubectl plugin (``kubectl lpm ...``), a thin layer over lpm's API objects.

    kubectl lpm migrate POD --to NODE [--retain-original] [--wait | --no-wait] [--timeout D]
    kubectl lpm status [MIGRATION] [--wait] [--timeout D] [-o json|yaml|wide|name]
    kubectl lpm ls [-o json|yaml|wide|name] [--store DIR|s3://BUCKET/PREFIX]
    kubectl lpm pin|unpin CHECKPOINT --store DIR|s3://BUCKET/PREFIX
    kubectl lpm get CHECKPOINT [-c CONTAINER] -o FILE --store DIR|s3://BUCKET/PREFIX [--encryption-keys DIR]
    kubectl lpm inspect CHECKPOINT --store DIR [-o text|json] [--env] [--memory PID] [--encryption-keys DIR]
    kubectl lpm completion bash|zsh
    every command: [--kubeconfig FILE] [--context NAME] [-n NS | -A]

Errors go to stderr as one line; the exit code says which kind (``commands.Exit``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from watcher.errors import LpmError
from watcher.kubectl import completion
from watcher.kubectl.commands import COMMANDS, Exit, UsageError
from watcher.kubectl.session import connect

PROG = "kubectl-lpm"


def _connection_flags() -> argparse.ArgumentParser:
    """kubectl's flags, accepted before or after the subcommand. SUPPRESS: a flag left out sets nothing, so
    a subcommand's copy cannot overwrite what was given before the subcommand."""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--kubeconfig", default=argparse.SUPPRESS, help="the kubeconfig file (default: "
                       "$KUBECONFIG, else ~/.kube/config)")
    flags.add_argument("--context", default=argparse.SUPPRESS, help="the kubeconfig context to use")
    flags.add_argument("-n", "--namespace", default=argparse.SUPPRESS,
                       help="the namespace (default: the context's, else default)")
    flags.add_argument("-A", "--all-namespaces", action="store_true", default=argparse.SUPPRESS,
                       help="every namespace (status, ls)")
    return flags


def build_parser() -> argparse.ArgumentParser:
    flags = _connection_flags()
    parser = argparse.ArgumentParser(prog=PROG, parents=[flags], description="Live pod migration (lpm) from kubectl.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, parents=[flags], help=command.help, description=command.help)
        command.arguments(sub)
    shells = commands.add_parser("completion", help="print a shell completion script",
                                 description="print a completion script: source <(kubectl-lpm completion bash)")
    shells.add_argument("shell", choices=sorted(completion.SHELLS))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "completion":
        sys.stdout.write(completion.script(parser, args.shell))
        return Exit.OK
    # kubernetes-asyncio logs a missing kubeconfig as a warning too; the error below says it once.
    logging.getLogger("kubernetes_asyncio").setLevel(logging.ERROR)
    try:
        return asyncio.run(_run(args))
    except UsageError as err:
        parser.error(str(err))  # exits 2
    except LpmError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return Exit.FAILED
    except KeyboardInterrupt:
        return Exit.INTERRUPTED


async def _run(args: argparse.Namespace) -> int:
    session = await connect(getattr(args, "kubeconfig", None), getattr(args, "context", None))
    try:
        return await COMMANDS[args.command].run(args, session)
    finally:
        await session.kube.client.close()
