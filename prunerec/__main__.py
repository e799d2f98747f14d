"""`python -m prunerec ...` runs the CLI (as `-m prunerec.cli` does), e.g. under torchrun:
`torchrun --nproc_per_node 4 -m prunerec train ...`."""
from prunerec.cli import main

if __name__ == "__main__":
    main(prog_name="prunerec")
