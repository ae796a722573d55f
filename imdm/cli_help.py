"""The command line's help texts beyond each argument's line: an example per command and, for the
commands that take a recipe or a pipeline, the packaged `builtin:` names."""

from __future__ import annotations

import argparse
import textwrap

from imdm.recipe.packaged import PIPELINES, packaged_names

EXAMPLES = {
    "check": ["imdm check builtin:synthetic train.steps=500", "imdm check builtin:pipelines/quickstart",
              "imdm check my_recipe.toml --world-size 8"],
    "train": ["imdm train builtin:synthetic run.name=mine train.steps=500",
              "torchrun --nproc_per_node 4 -m imdm train builtin:owt"],
    "couplings": ["imdm couplings builtin:synthetic_couplings couplings.num=4096"],
    "pipeline": ["imdm pipeline builtin:pipelines/synthetic_repro_cpu",
                 "imdm pipeline builtin:pipelines/quickstart --only quickstart-imdm train.device=cpu"],
    "sample": ["imdm sample runs/quickstart-imdm --steps 4 --num-samples 4",
               "imdm sample runs/local-gpt2-imdm --prefix 'To be' --format jsonl --out samples.jsonl"],
    "eval": ["imdm eval runs/quickstart-mdlm sampling.steps=[1,64]",
             "imdm eval runs/local-gpt2-imdm eval.judge=gpt2 logging.progress=false"],
    "quickstart": ["imdm quickstart", "imdm quickstart --output-dir /tmp/qs train.device=cpu"],
    "plot": ["imdm plot runs/owt-mdlm runs/owt-imdm --out ppl.png"],
}
TAKES_BUILTIN = ("check", "train", "couplings", "pipeline")


def _wrapped(label: str, names: list[str]) -> str:
    names_text = textwrap.fill(", ".join(names), width=100, initial_indent="  ", subsequent_indent="  ",
                               break_on_hyphens=False)
    return f"{label}:\n{names_text}"


def builtin_names_text() -> str:
    """The packaged recipes and pipelines, as help text."""
    return "\n".join((_wrapped("packaged recipes (builtin:NAME)", packaged_names()),
                      _wrapped(f"packaged pipelines (builtin:{PIPELINES}/NAME)", packaged_names(PIPELINES))))


def epilog(command: str) -> str:
    """What `imdm COMMAND --help` shows below the arguments."""
    parts = ["examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[command])]
    if command in TAKES_BUILTIN:
        parts.append(builtin_names_text())
    return "\n\n".join(parts)


def command_parser(sub, command: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand whose help shows `summary`, then its arguments, then epilog(command)."""
    return sub.add_parser(command, help=summary, description=summary, epilog=epilog(command),
                          formatter_class=argparse.RawDescriptionHelpFormatter)
