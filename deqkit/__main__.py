"""``python -m deqkit ...`` and ``torchrun -m deqkit train ...`` run the command line."""

from deqkit.cli import main

if __name__ == "__main__":
    main()
