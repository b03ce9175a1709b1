//! Prompt syntax as AUTOMATIC1111's web UI reads it (`modules/prompt_parser.py`,
//! `parse_prompt_attention`): `(text)` weighs text 1.1×, `(text:1.3)` 1.3×, `[text]` 1/1.1×,
//! nested brackets multiply, `\(` `\)` `\[` `\]` `\\` are the literal characters, and `BREAK`
//! (a whole word, in capitals) ends the current 75-token chunk. Unbalanced brackets are
//! forgiving: an unclosed `(` or `[` weighs everything after it, a stray `)` or `]` is text.
//!
//! The quirks are kept on purpose, so a prompt copied from A1111 means here what it meant there:
//! a break is the pair (`BREAK`, -1) until the chunker sees it, so a `BREAK` inside brackets
//! (weight -1.1) is the text "break"; adjacent pieces of equal weight merge. The one deliberate
//! difference: A1111 stops with a Python error on a weight that is not a number (`(a:1.2.3)`,
//! `(a:.)`); here the `:1.2.3` is text and the `)` closes the bracket as a plain one would.

/// How a prompt's text becomes tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PromptSyntax {
    /// A1111's emphasis and `BREAK`, any length as 75-token chunks (what SD users write).
    #[default]
    A1111,
    /// The text as diffusers' pipelines read it: brackets are characters, 77 tokens at most.
    Diffusers,
}

impl PromptSyntax {
    pub const ALL: [PromptSyntax; 2] = [PromptSyntax::A1111, PromptSyntax::Diffusers];

    pub fn id(self) -> &'static str {
        match self {
            PromptSyntax::A1111 => "a1111",
            PromptSyntax::Diffusers => "diffusers",
        }
    }

    pub fn parse(s: &str) -> crate::Result<PromptSyntax> {
        PromptSyntax::ALL
            .into_iter()
            .find(|p| p.id() == s)
            .ok_or_else(|| crate::Error::Request(format!("unknown prompt syntax `{s}` (known: a1111, diffusers)")))
    }
}

/// A run of prompt text and its weight; `BREAK` is the text "BREAK" with weight -1.
#[derive(Clone, Debug, PartialEq)]
pub struct Fragment {
    pub text: String,
    pub weight: f64,
}

impl Fragment {
    pub fn is_break(&self) -> bool {
        self.text == "BREAK" && self.weight == -1.0
    }
}

const ROUND: f64 = 1.1;
const SQUARE: f64 = 1.0 / 1.1;

/// One lexical token of the attention syntax, in the order A1111's pattern tries them.
enum Lexeme<'a> {
    /// `\x`: the text after the backslash (empty for a lone `\`).
    Escaped(&'a str),
    OpenRound,
    OpenSquare,
    /// `:number)`, with the number's text.
    Weight(&'a str),
    CloseRound,
    CloseSquare,
    Text(&'a str),
}

fn lex(s: &str) -> Vec<Lexeme<'_>> {
    let mut out = Vec::new();
    let mut i = 0;
    let special = |c: char| matches!(c, '\\' | '(' | ')' | '[' | ']' | ':');
    while let Some(c) = s[i..].chars().next() {
        let rest = &s[i..];
        let (lexeme, len) = match c {
            '\\' => match rest[1..].chars().next() {
                Some(e @ ('(' | ')' | '[' | ']' | '\\')) => (Lexeme::Escaped(&rest[1..1 + e.len_utf8()]), 2),
                _ => (Lexeme::Escaped(""), 1),
            },
            '(' => (Lexeme::OpenRound, 1),
            '[' => (Lexeme::OpenSquare, 1),
            ')' => (Lexeme::CloseRound, 1),
            ']' => (Lexeme::CloseSquare, 1),
            ':' => {
                // `[+-]?[.\d]+` then `)`: a maximal run, as no shorter one can be followed by `)`.
                let body = &rest[1..];
                let sign = usize::from(body.starts_with(['+', '-']));
                let run = body[sign..].find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(body.len() - sign);
                if run > 0 && body[sign + run..].starts_with(')') {
                    (Lexeme::Weight(&body[..sign + run]), sign + run + 2)
                } else {
                    (Lexeme::Text(":"), 1)
                }
            }
            _ => {
                let len = rest.find(special).unwrap_or(rest.len());
                (Lexeme::Text(&rest[..len]), len)
            }
        };
        out.push(lexeme);
        i += len;
    }
    out
}

/// A1111's `\s*\bBREAK\b\s*` split: `BREAK` with no word character touching it, and the
/// whitespace around it.
fn split_breaks(text: &str) -> Vec<&str> {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut parts = Vec::new();
    let mut start = 0;
    let mut from = 0;
    while let Some(at) = text[from..].find("BREAK").map(|p| p + from) {
        let end = at + "BREAK".len();
        if word(text[..at].chars().next_back()) || word(text[end..].chars().next()) {
            from = at + 1;
            continue;
        }
        let lead = text[start..at].trim_end_matches(char::is_whitespace).len() + start;
        parts.push(&text[start..lead]);
        start = text[end..].find(|c: char| !c.is_whitespace()).map_or(text.len(), |n| end + n);
        from = start.max(end);
    }
    parts.push(&text[start..]);
    parts
}

/// The fragments of `text` with their weights, as `parse_prompt_attention` returns them.
pub fn parse_attention(text: &str) -> Vec<Fragment> {
    let mut res: Vec<Fragment> = Vec::new();
    let (mut round, mut square) = (Vec::new(), Vec::new());
    fn multiply(res: &mut [Fragment], from: usize, by: f64) {
        for f in &mut res[from..] {
            f.weight *= by;
        }
    }
    let text_run = |res: &mut Vec<Fragment>, t: &str| {
        for (i, part) in split_breaks(t).into_iter().enumerate() {
            if i > 0 {
                res.push(Fragment { text: "BREAK".into(), weight: -1.0 });
            }
            res.push(Fragment { text: part.into(), weight: 1.0 });
        }
    };
    for lexeme in lex(text) {
        match lexeme {
            Lexeme::Escaped(t) => res.push(Fragment { text: t.into(), weight: 1.0 }),
            Lexeme::OpenRound => round.push(res.len()),
            Lexeme::OpenSquare => square.push(res.len()),
            Lexeme::Weight(n) if !round.is_empty() => match n.parse::<f64>() {
                Ok(w) => multiply(&mut res, round.pop().unwrap_or(0), w),
                Err(_) => {
                    text_run(&mut res, &format!(":{n}"));
                    multiply(&mut res, round.pop().unwrap_or(0), ROUND);
                }
            },
            Lexeme::CloseRound if !round.is_empty() => multiply(&mut res, round.pop().unwrap_or(0), ROUND),
            Lexeme::CloseSquare if !square.is_empty() => multiply(&mut res, square.pop().unwrap_or(0), SQUARE),
            Lexeme::Weight(n) => text_run(&mut res, &format!(":{n})")),
            Lexeme::CloseRound => text_run(&mut res, ")"),
            Lexeme::CloseSquare => text_run(&mut res, "]"),
            Lexeme::Text(t) => text_run(&mut res, t),
        }
    }
    for pos in round {
        multiply(&mut res, pos, ROUND);
    }
    for pos in square {
        multiply(&mut res, pos, SQUARE);
    }
    if res.is_empty() {
        res.push(Fragment { text: String::new(), weight: 1.0 });
    }
    let mut merged: Vec<Fragment> = Vec::with_capacity(res.len());
    for f in res {
        match merged.last_mut() {
            Some(last) if last.weight == f.weight => last.text.push_str(&f.text),
            _ => merged.push(f),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaks_split_at_whole_words_only() {
        assert_eq!(split_breaks("a BREAK b"), ["a", "b"]);
        assert_eq!(split_breaks("aBREAK b"), ["aBREAK b"]);
        assert_eq!(split_breaks("BREAK"), ["", ""]);
        assert_eq!(split_breaks("x,BREAK,y"), ["x,", ",y"]);
        assert_eq!(split_breaks("BREAK BREAK"), ["", "", ""]);
    }

    #[test]
    fn lora_tags_come_out_of_the_prompt() {
        let (p, tags) = extract_loras("a cat <lora:film:0.7>, (sharp:1.2) <lora:grain>").unwrap();
        assert_eq!(p, "a cat , (sharp:1.2) ");
        assert_eq!(
            tags,
            [LoraTag { name: "film".into(), strength: 0.7 }, LoraTag { name: "grain".into(), strength: 1.0 }]
        );
        assert!(extract_loras("<lora:x:lots>").unwrap_err().to_string().contains("not a number"));
        assert!(extract_loras("<lora::1>").is_err());
        assert_eq!(extract_loras("no tags <lora:open").unwrap().0, "no tags <lora:open");
    }

    #[test]
    fn weights_that_are_not_numbers_are_text() {
        let f = parse_attention("(a:1.2.3)");
        assert_eq!(f, [Fragment { text: "a:1.2.3".into(), weight: 1.1 }]);
    }
}

/// A1111's extra-network tag for a LoRA in a prompt: `<lora:name>` or `<lora:name:0.8>`.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraTag {
    pub name: String,
    pub strength: f32,
}

/// The prompt without its `<lora:…>` tags, and the tags, as A1111 takes them out before it
/// reads the rest. A tag whose strength is not a number is an error, not text.
pub fn extract_loras(prompt: &str) -> crate::Result<(String, Vec<LoraTag>)> {
    let mut out = String::with_capacity(prompt.len());
    let mut tags = Vec::new();
    let mut rest = prompt;
    while let Some(at) = rest.find("<lora:") {
        let Some(end) = rest[at..].find('>') else { break };
        out.push_str(&rest[..at]);
        let body = &rest[at + "<lora:".len()..at + end];
        let mut parts = body.split(':');
        let name = parts.next().unwrap_or("").trim().to_string();
        let strength =
            match parts.next() {
                None => 1.0,
                Some(s) => s.trim().parse::<f32>().ok().filter(|v| v.is_finite()).ok_or_else(|| {
                    crate::Error::Request(format!("<lora:{body}>: the strength `{s}` is not a number"))
                })?,
            };
        if name.is_empty() || parts.next().is_some() {
            return Err(crate::Error::Request(format!("<lora:{body}>: expected <lora:name> or <lora:name:strength>")));
        }
        tags.push(LoraTag { name, strength });
        rest = &rest[at + end + 1..];
    }
    out.push_str(rest);
    Ok((out, tags))
}
