//! CLIP's BPE tokenizer, built with the `tokenizers` crate from the `vocab.json` + `merges.txt`
//! that SD repositories publish (they ship no `tokenizer.json`): NFC, whitespace collapsed,
//! lower case; CLIP's split pattern; byte-level alphabet; `</w>` marks the end of a word.
//!
//! Sequences are BOS + up to 75 tokens + EOS, padded to 77 with the pad token the repo names
//! (`<|endoftext|>` for SD 1.x, `!` = id 0 for SD 2.x). As in OpenCLIP, a `!` typed in the prompt
//! stays ordinary text even when it is the pad token (transformers maps every `!` of an SD 2
//! prompt to 0; OpenCLIP, which SD 2 was trained with, does not). A typed `<|startoftext|>` or
//! `<|endoftext|>` is that special token, as in transformers.

use std::collections::HashMap;

use serde::Deserialize;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormSeq, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSeq;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::error::{Error, Result};

const SPLIT: &str = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
pub const BOS: &str = "<|startoftext|>";
pub const EOS: &str = "<|endoftext|>";

pub struct ClipTokenizer {
    inner: Tokenizer,
    pub bos: u32,
    pub eos: u32,
    pub pad: u32,
    pub max_len: usize,
    /// `,</w>`, where A1111's chunker prefers to break a long prompt.
    pub comma: Option<u32>,
}

/// Token ids of one prompt, always `max_len` long.
#[derive(Clone, Debug, PartialEq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    /// Tokens (with BOS and EOS) the prompt had before truncation.
    pub total: usize,
    /// Prompt tokens cut off by truncation (0 when it fit).
    pub dropped: usize,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum TokenSpec {
    Plain(String),
    Added {
        content: String,
        #[serde(default)]
        normalized: bool,
    },
}

impl TokenSpec {
    /// The token's text, and whether transformers matches it in the normalized (lower-cased)
    /// text: a plain string is never normalized, an `AddedToken` says.
    fn parts(&self) -> (&str, bool) {
        match self {
            TokenSpec::Plain(s) => (s, false),
            TokenSpec::Added { content, normalized } => (content, *normalized),
        }
    }
}

#[derive(Deserialize, Default)]
struct SpecialTokens {
    bos_token: Option<TokenSpec>,
    eos_token: Option<TokenSpec>,
    unk_token: Option<TokenSpec>,
    pad_token: Option<TokenSpec>,
    model_max_length: Option<f64>,
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

impl ClipTokenizer {
    /// From the repo's `tokenizer/` files. `special_tokens_map` wins over `tokenizer_config` for
    /// the pad token, as transformers resolves it.
    pub fn from_files(
        vocab_json: &[u8],
        merges_txt: &[u8],
        tokenizer_config: Option<&[u8]>,
        special_tokens_map: Option<&[u8]>,
    ) -> Result<ClipTokenizer> {
        let vocab: HashMap<String, u32> =
            serde_json::from_slice(vocab_json).map_err(|e| tok_err(format!("vocab.json: {e}")))?;
        let merges_txt = std::str::from_utf8(merges_txt).map_err(|e| tok_err(format!("merges.txt: {e}")))?;
        let merges: Vec<(String, String)> = merges_txt
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .map(|l| {
                let mut it = l.split_whitespace();
                match (it.next(), it.next()) {
                    (Some(a), Some(b)) => Ok((a.to_string(), b.to_string())),
                    _ => Err(tok_err(format!("merges.txt: bad line `{l}`"))),
                }
            })
            .collect::<Result<_>>()?;
        let id = |t: &str| vocab.get(t).copied().ok_or_else(|| tok_err(format!("vocab.json lacks {t}")));
        let (bos, eos) = (id(BOS)?, id(EOS)?);
        let comma = vocab.get(",</w>").copied();

        let parse = |b: Option<&[u8]>| -> Result<SpecialTokens> {
            b.map(|b| serde_json::from_slice(b).map_err(tok_err)).transpose().map(|s| s.unwrap_or_default())
        };
        let (config, map) = (parse(tokenizer_config)?, parse(special_tokens_map)?);
        // Per role, special_tokens_map wins over tokenizer_config; transformers registers the
        // roles in this order, and a later role naming the same text sets how it is matched.
        let roles = [
            map.bos_token.clone().or(config.bos_token.clone()),
            map.eos_token.clone().or(config.eos_token.clone()),
            map.unk_token.clone().or(config.unk_token.clone()),
            map.pad_token.clone().or(config.pad_token.clone()),
        ];
        let normalized =
            |text: &str| roles.iter().flatten().map(TokenSpec::parts).rfind(|p| p.0 == text).is_some_and(|p| p.1);
        let pad_name = roles[3].as_ref().map_or(EOS, |r| r.parts().0).to_string();
        let pad = id(&pad_name)?;
        let max_len = config.model_max_length.filter(|&m| (2.0..=4096.0).contains(&m)).map_or(77, |m| m as usize);

        let bpe = BPE::builder()
            .vocab_and_merges(vocab.into_iter().collect::<tokenizers::models::bpe::Vocab>(), merges)
            .unk_token(EOS.into())
            .end_of_word_suffix("</w>".into())
            .build()
            .map_err(tok_err)?;
        let mut inner = Tokenizer::new(bpe);
        let ws = Replace::new(tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()), " ")
            .map_err(tok_err)?;
        inner
            .with_normalizer(Some(NormalizerWrapper::Sequence(NormSeq::new(vec![
                NormalizerWrapper::NFC(NFC),
                NormalizerWrapper::Replace(ws),
                NormalizerWrapper::Lowercase(Lowercase),
            ]))))
            .map_err(tok_err)?;
        let split =
            Split::new(SplitPattern::Regex(SPLIT.into()), SplitDelimiterBehavior::Removed, true).map_err(tok_err)?;
        inner.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(PreSeq::new(vec![
            PreTokenizerWrapper::Split(split),
            // GPT-2's split inside each piece too, as transformers 5's CLIPTokenizer does: it
            // only matters for a special token's text in another case (`<|EndOfText|>`),
            // which lower-cases to one piece that GPT-2's pattern cuts at the bars.
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
        ]))));
        // A special token typed in the prompt is that token, as transformers' CLIPTokenizer reads
        // it, never BPE pieces of its text: matched in the raw text, or in the lower-cased text
        // where the config says `normalized` (SD 1.5's pad entry makes `<|endoftext|>` raw, its
        // `<|startoftext|>` stays normalized). Both are in the vocabulary, so their ids stay. SD 2
        // names `!` as its pad token too; that one stays ordinary text (see the module doc).
        inner
            .add_special_tokens([BOS, EOS].map(|t| AddedToken::from(t, true).normalized(normalized(t))))
            .map_err(tok_err)?;
        Ok(ClipTokenizer { inner, bos, eos, pad, max_len, comma })
    }

    /// The text's token ids alone: no BOS, EOS or padding, never truncated.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.inner.encode(text, false).map_err(tok_err)?.get_ids().to_vec())
    }

    pub fn encode(&self, prompt: &str) -> Result<Tokens> {
        let body = self.tokenize(prompt)?;
        let keep = body.len().min(self.max_len - 2);
        let mut ids = Vec::with_capacity(self.max_len);
        ids.push(self.bos);
        ids.extend_from_slice(&body[..keep]);
        ids.push(self.eos);
        ids.resize(self.max_len, self.pad);
        Ok(Tokens { ids, total: body.len() + 2, dropped: body.len() - keep })
    }
}
