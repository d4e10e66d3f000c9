"""Writes a toy-world corpus of unpaired texts, one a line, for ``train.py --prior text-bank --prior_texts``.

    python examples/toy_world/write_corpus.py > corpus.txt                           # train.py's default bank
    python examples/toy_world/write_corpus.py --kind mismatched --n 1000 > mismatched.txt
    python examples/toy_world/write_corpus.py --kind generic > generic.txt            # the 90 generic prompts

Kinds (`ToyWorld.text_corpus`): ``captions`` of the CLIP split, never of training or evaluation
images; ``mismatched``, the same at other mention rates with three templates withheld; ``generic``.
"""

import argparse
import sys

from vdl_diffusion.toy import ToyWorld
from vdl_diffusion.toy.world import CORPORA


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=CORPORA, default="captions", help="which corpus")
    parser.add_argument("--n", type=int, default=4000, help="number of texts (not for generic)")
    parser.add_argument("--seed", type=int, default=0, help="world seed (train.py's --seed)")
    args = parser.parse_args()
    sys.stdout.write("\n".join(ToyWorld(args.seed).text_corpus(args.kind, args.n)) + "\n")


if __name__ == "__main__":
    main()
