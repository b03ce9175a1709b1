#!/usr/bin/env python3
"""Write tests/fixtures/prompt_syntax.json and tests/fixtures/<model>/prompt_chunks.safetensors:
how AUTOMATIC1111's web UI reads prompt syntax, and what a long, weighted prompt's conditioning is.

1. `parse`: for each prompt, the fragments and weights A1111's own `parse_prompt_attention`
   returns. That function is run from an A1111 checkout given with `--a1111 DIR` (it imports
   `DIR/modules/prompt_parser.py`; it needs `lark` and `torch` importable), so the expected values
   are A1111's, not a re-implementation's. The prompts cover its docstring's examples, nesting,
   explicit weights, escapes, unbalanced brackets, BREAK, and non-ASCII text. Prompts on which
   A1111 raises (a weight like `1.2.3`) are left out: we define those differently (see
   src/pipeline/prompt.rs).
2. `chunks`: for tiny-sd1 and tiny-sd2, prompts split into 77-token chunks the way A1111's
   `FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line` does (written out below: each fragment
   tokenized alone without special tokens; 75 tokens a chunk; when a chunk fills and a comma is
   at most 20 tokens back, the text after the comma moves to the next chunk; BREAK closes the
   chunk; each chunk is BOS + tokens + EOS padding to 77; for SD 2, whose pad token is not EOS,
   everything after the first EOS becomes the pad token), the per-token multipliers, A1111's
   token count, and the conditioning: each chunk through the text encoder (last hidden state),
   multiplied by its multipliers, rescaled so its mean is the unweighted mean (A1111's "Original"
   emphasis, per prompt), the chunks concatenated along the sequence axis.

Run make_fixtures.py first. Pinned versions: requirements.txt (plus lark for A1111's module).
"""

import argparse
import importlib.util
import json
import math
import pathlib

import torch
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"

PARSE_PROMPTS = [
    "normal text",
    "an (important) word",
    "(unbalanced",
    "\\(literal\\]",
    "(unnecessary)(parens)",
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
    "",
    "   ",
    "(masterpiece:1.2), best quality, [blurry]",
    "((nested (deeply) here))",
    "[[less]] and [[[even less]]]",
    "(a [b] c)",
    "[a (b) c]",
    "(a:0.5) (b:1.5) (c:2)",
    "(a:-1) (b:+2) (c:.5) (d:1.)",
    "(weight with space: 1.2)",
    "(a:1.2",
    "a:1.2)",
    "ratio 16:9 and time 3:45",
    "closing only) and ]",
    "unclosed [square",
    "(round [mixed) order]",
    "\\\\ backslash and \\ lone",
    "escaped \\(not weighted\\) text",
    "\\[also literal\\] (weighted)",
    "a BREAK b",
    "a BREAK BREAK b",
    "BREAK at start",
    "at end BREAK",
    "notBREAK and BREAKnot and break",
    "x,BREAK,y",
    "(in brackets BREAK too)",
    "a\nBREAK\n\tb",
    "(café naïve:1.3) façade",
    "東京の(夜景:1.4)",
    "🐱 (rocket:0.8) 🚀",
    "(a:1.1)(a:1.1)",
    "((a)) (a:1.21)",
    "( spaced )",
    "()",
    "[]",
    "(:1.5)",
    "a :) b",
    "multiple :: colons : here",
]

CHUNK_PROMPTS = [
    "a (red:1.3) circle on a [blue] background",
    "",
    "(masterpiece:1.2), best quality, "
    + "a red circle on a blue background, " * 11
    + "soft light, (sharp focus), film grain, BREAK [blurry], ((vivid)), "
    + "a small cat sitting on a wooden table next to a window, " * 3,
    "a cat <|endoftext|> (dog:1.5)",
    "word " * 80,
]

CHUNK = 75
COMMA_BACKTRACK = 20


def load_a1111(directory):
    path = pathlib.Path(directory) / "modules" / "prompt_parser.py"
    spec = importlib.util.spec_from_file_location("a1111_prompt_parser", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.parse_prompt_attention


def tokenize_line(tok, parsed):
    """A1111's tokenize_line without textual-inversion embeddings."""
    comma = tok.get_vocab().get(",</w>")
    bos, eos = tok.bos_token_id, tok.eos_token_id
    tokenized = [tok(text, truncation=False, add_special_tokens=False).input_ids for text, _ in parsed]
    chunks, cur, mults = [], [], []
    state = {"count": 0, "last_comma": -1}

    def next_chunk(is_last=False):
        nonlocal cur, mults
        state["count"] += len(cur) if is_last else CHUNK
        pad = CHUNK - len(cur)
        if pad > 0:
            cur, mults = cur + [eos] * pad, mults + [1.0] * pad
        chunks.append(([bos] + cur + [eos], [1.0] + mults + [1.0]))
        state["last_comma"] = -1
        cur, mults = [], []

    for tokens, (text, weight) in zip(tokenized, parsed):
        if text == "BREAK" and weight == -1:
            next_chunk()
            continue
        for token in tokens:
            if token == comma:
                state["last_comma"] = len(cur)
            elif len(cur) == CHUNK and state["last_comma"] != -1 and len(cur) - state["last_comma"] <= COMMA_BACKTRACK:
                cut = state["last_comma"] + 1
                moved, moved_mults = cur[cut:], mults[cut:]
                cur, mults = cur[:cut], mults[:cut]
                next_chunk()
                cur, mults = moved, moved_mults
            if len(cur) == CHUNK:
                next_chunk()
            cur.append(token)
            mults.append(weight)
    if cur or not chunks:
        next_chunk(is_last=True)

    pad = tok.pad_token_id
    if pad != eos:
        for ids, _ in chunks:
            first = ids.index(eos)
            ids[first + 1 :] = [pad] * (len(ids) - first - 1)
    return chunks, state["count"]


@torch.no_grad()
def conditioning(model, chunks):
    zs = []
    for ids, mults in chunks:
        z = model(input_ids=torch.tensor([ids])).last_hidden_state
        original_mean = z.mean()
        z = z * torch.tensor(mults).reshape(1, -1, 1)
        z = z * (original_mean / z.mean())
        zs.append(z[0])
    return torch.cat(zs, dim=0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a1111", required=True, help="an AUTOMATIC1111/stable-diffusion-webui checkout")
    args = ap.parse_args()
    parse = load_a1111(args.a1111)

    out = {"description": __doc__.strip().splitlines()[0], "parse": [], "chunks": {}}
    for p in PARSE_PROMPTS:
        out["parse"].append({"prompt": p, "fragments": [[t, float(w)] for t, w in parse(p)]})

    for model in ["tiny-sd1", "tiny-sd2"]:
        tok = CLIPTokenizer.from_pretrained(FIXTURES / model / "tokenizer")
        te = CLIPTextModel.from_pretrained(FIXTURES / model / "text_encoder", variant="fp16", torch_dtype=torch.float32)
        te.eval()
        cases, tensors = [], {}
        for i, p in enumerate(CHUNK_PROMPTS):
            chunks, count = tokenize_line(tok, parse(p))
            tensors[f"case{i}"] = conditioning(te, chunks).contiguous()
            cases.append(
                {
                    "prompt": p,
                    "ids": [c[0] for c in chunks],
                    "multipliers": [c[1] for c in chunks],
                    "token_count": count,
                    "target": math.ceil(max(count, 1) / CHUNK) * CHUNK,
                    "tensor": f"case{i}",
                }
            )
        assert len(cases[2]["ids"]) == 3, f"{model}: the long prompt has {len(cases[2]['ids'])} chunks"
        save_file(tensors, FIXTURES / model / "prompt_chunks.safetensors")
        out["chunks"][model] = cases
    (FIXTURES / "prompt_syntax.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(len(out["parse"]), "parse cases;", {m: [len(c["ids"]) for c in v] for m, v in out["chunks"].items()})


if __name__ == "__main__":
    main()
