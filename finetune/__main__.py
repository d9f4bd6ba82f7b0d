"""Command line entry: ``python -m finetune --help`` (headless training, config template).

See ``finetune/cli.py`` for the commands and exit codes.
"""

from finetune.cli import run

if __name__ == "__main__":
    run()
