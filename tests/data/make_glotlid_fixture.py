"""Writes tests/data/tiny_glotlid.ftz: a small fastText language-ID model with GlotLID/OpenLID-style labels
(``__label__deu_Latn``, ``__label__cmn_Hani``...), trained by fastText itself on NTREX-128 sentences.

It exists so the tests can load a real fastText file with GlotLID-format labels (the real GlotLID model is
1.6 GB). Needs the training package `fasttext` (not fasttext-predict; keep it out of the project venv, whose
`fasttext` module is fasttext-predict):

    python3 -m venv /tmp/ftvenv && /tmp/ftvenv/bin/pip install "numpy<2" fasttext
    /tmp/ftvenv/bin/python tests/data/make_glotlid_fixture.py ../shared/data/ntrex128
"""

import random
import sys
import tempfile
from pathlib import Path

import fasttext

LABELS = {"de": "deu_Latn", "en": "eng_Latn", "es": "spa_Latn", "fr": "fra_Latn", "ru": "rus_Cyrl",
          "hi": "hin_Deva", "ar": "arb_Arab", "zh": "cmn_Hani"}


def main(ntrex: Path, out: Path) -> None:
    rows = []
    for lang, label in LABELS.items():
        lines = (ntrex / f"{lang}.txt").read_text(encoding="utf-8").splitlines()[:1000]
        rows += [f"__label__{label} {line.strip()}" for line in lines if line.strip()]
    random.Random(0).shuffle(rows)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8", delete=False) as f:
        f.write("\n".join(rows) + "\n")
    model = fasttext.train_supervised(f.name, dim=16, epoch=10, minn=2, maxn=4, bucket=20000, minCount=2,
                                      wordNgrams=1, seed=0, thread=1, verbose=0)
    model.quantize(input=f.name, qnorm=True, retrain=True, cutoff=5000)
    model.save_model(str(out))
    print(out, out.stat().st_size, "bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).with_name("tiny_glotlid.ftz"))
