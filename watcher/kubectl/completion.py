"""Shell completion scripts, made from the parser itself (pure), so a new subcommand or flag completes
without anyone editing a script: subcommands, each one's flags, and the values of flags with choices.

The zsh script is the bash one under zsh's ``bashcompinit``, as kubectl's own plugins commonly ship it.
"""

from __future__ import annotations

import argparse
import shlex

SHELLS = frozenset({"bash", "zsh"})
_FILE_FLAGS = ("--kubeconfig", "--store")  # complete file names after these

_BASH = """\
# kubectl-lpm completion: source <(kubectl-lpm completion bash)
_kubectl_lpm() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}} command="" i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${{COMP_WORDS[i]}} in
            {names}) command=${{COMP_WORDS[i]}}; break ;;
        esac
    done
    case $prev in
{values}
        {files}) COMPREPLY=($(compgen -f -- "$cur")); return ;;
    esac
    case $command in
{words}
    esac
}}
complete -F _kubectl_lpm kubectl-lpm
"""


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    # argparse exposes its actions and subparsers only through these private names.
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    return [flag for action in parser._actions for flag in action.option_strings]


def _words(words: list[str]) -> str:
    return shlex.quote(" ".join(words))


def bash(parser: argparse.ArgumentParser) -> str:
    subcommands = _subcommands(parser)
    values: dict[str, list[str]] = {}  # flag -> its choices
    for sub in [parser, *subcommands.values()]:
        for action in sub._actions:
            if action.option_strings and action.choices is not None and action.nargs != 0:
                for flag in action.option_strings:
                    values[flag] = [str(choice) for choice in action.choices]
    cases = [f'        {"|".join(sorted(flags))}) COMPREPLY=($(compgen -W {_words(list(choices))} -- "$cur"))'
             ' ; return ;;' for choices, flags in _by_value(values).items()]
    words = [f'        "") COMPREPLY=($(compgen -W {_words([*subcommands, *_flags(parser)])} -- "$cur")) ;;']
    for name, sub in subcommands.items():
        positional = [str(c) for a in sub._actions if not a.option_strings and a.choices for c in a.choices]
        words.append(f'        {name}) COMPREPLY=($(compgen -W {_words(positional + _flags(sub))} -- "$cur")) ;;')
    return _BASH.format(names="|".join(subcommands), values="\n".join(cases), files="|".join(_FILE_FLAGS),
                        words="\n".join(words))


def _by_value(values: dict[str, list[str]]) -> dict[tuple[str, ...], list[str]]:
    grouped: dict[tuple[str, ...], list[str]] = {}
    for flag, choices in values.items():
        grouped.setdefault(tuple(choices), []).append(flag)
    return grouped


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    if shell == "zsh":
        return ("#compdef kubectl-lpm\n# source <(kubectl-lpm completion zsh)\n"
                "autoload -U +X bashcompinit && bashcompinit\n" + bash(parser))
    return bash(parser)
