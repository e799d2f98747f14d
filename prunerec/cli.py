"""The `prunerec` command line: each command parses, calls one function, prints."""
from __future__ import annotations

import click

from prunerec.compress import cli as compress_cli
from prunerec.data import cli as data_cli
from prunerec.demo import cli as demo_cli
from prunerec.evaluate import cli as evaluate_cli
from prunerec.export import cli as export_cli
from prunerec.loadtest import cli as loadtest_cli
from prunerec.model import import_cli
from prunerec.serve import cli as serve_cli
from prunerec.train import cli as train_cli


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="prunerec")
def main():
    """Compress fine-tuned Qwen2 recommenders (BIGRec) with PruneRec.

    Typical flow: `data` -> `train` -> `evaluate`; `demo` runs it all on built-in data.
    """
    from prunerec.allocator import keep_freed_memory

    keep_freed_memory()


for command in (*data_cli.COMMANDS, *train_cli.COMMANDS, *evaluate_cli.COMMANDS, *demo_cli.COMMANDS,
                *import_cli.COMMANDS, *compress_cli.COMMANDS, *export_cli.COMMANDS, *serve_cli.COMMANDS,
                *loadtest_cli.COMMANDS):
    main.add_command(command)

if __name__ == "__main__":
    main()
