#!/usr/bin/env python3
"""Write tests/fixtures/tokenizer_cases.json: token ids transformers' CLIPTokenizer gives prompts
that type CLIP's special tokens literally, for tiny-sd1's and tiny-sd2's tokenizer folders.

diffusers' pipelines load CLIPTokenizer from the model folder (in transformers 5, backed by the
tokenizers library). Its added tokens (`<|startoftext|>`, `<|endoftext|>`) are split out of the
prompt before BPE, so a typed special token becomes that token's id, not BPE pieces of its text;
each is matched in the raw text, or in the lower-cased text when the config's AddedToken entry
for it says `normalized` (a plain-string entry, like SD 1.5's pad `<|endoftext|>`, is not). The
cases cover text around them, a near miss (`<|endoftext|` unclosed) and other letter cases. SD
2's `!` (also its pad token) is left out: our tokenizer keeps it ordinary text as OpenCLIP does,
which transformers does not (see make_fixtures.py).

Run make_fixtures.py first. Pinned versions: requirements.txt.
"""

import json
import pathlib

import transformers
from transformers import CLIPTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"

PROMPTS = [
    "a red circle <|endoftext|> a blue square",
    "<|startoftext|>a cat",
    "a cat<|endoftext|><|endoftext|>",
    "<|endoftext|>",
    "x <|endoftext| y",
    "<|ENDOFTEXT|> upper case is text",
    "hello,<|startoftext|>,world",
    "<|STARTOFTEXT|> and <|EndOfText|>",
    "   <|endoftext|>   spaced   ",
]


def main():
    out = {"description": __doc__.strip().splitlines()[0], "transformers": transformers.__version__, "models": {}}
    for model in ["tiny-sd1", "tiny-sd2"]:
        tok = CLIPTokenizer.from_pretrained(FIXTURES / model / "tokenizer")
        cases = []
        for p in PROMPTS:
            ids = tok(p, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
            cases.append({"prompt": p, "ids": ids})
        out["models"][model] = cases
    (FIXTURES / "tokenizer_cases.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps(out["models"]["tiny-sd1"][0])[:200])


if __name__ == "__main__":
    main()
