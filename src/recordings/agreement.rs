//! How far the live (streaming) transcript and the post-call (async) transcript agree.
//!
//! Both are reduced to word sequences: lower-cased, punctuation stripped, empty tokens
//! dropped. The score is the Dice coefficient over their longest common subsequence:
//! `2·LCS(a, b) / (|a| + |b|)`, in [0, 1]; 1 means the same words in the same order, and each
//! inserted, dropped or changed word lowers it. When the product of the lengths exceeds
//! [`MAX_LCS_CELLS`] the order-free multiset overlap is used instead (same formula with the
//! common multiset in place of the LCS) and `method` says so. Two empty transcripts score 1.

use std::collections::HashMap;

use serde::Serialize;
use utoipa::ToSchema;

/// About 0.1 s of work; beyond it (two ~6,000-word transcripts) the multiset method is used.
pub const MAX_LCS_CELLS: usize = 40_000_000;

#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct Agreement {
    /// 0 to 1 (see docs/RECORDINGS.md).
    pub score: f64,
    /// `lcs_dice` or `multiset_dice`.
    pub method: &'static str,
    pub live_words: usize,
    pub post_call_words: usize,
    pub common_words: usize,
}

/// Lower-case words without punctuation.
pub fn normalise(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|word| {
            word.chars()
                .filter(|c| c.is_alphanumeric() || *c == '\'')
                .flat_map(char::to_lowercase)
                .collect::<String>()
        })
        .filter(|word| !word.is_empty() && word != "'")
        .collect()
}

fn lcs_len(a: &[String], b: &[String]) -> usize {
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    let mut previous = vec![0u32; short.len() + 1];
    let mut current = vec![0u32; short.len() + 1];
    for x in long {
        for (j, y) in short.iter().enumerate() {
            current[j + 1] = if x == y {
                previous[j] + 1
            } else {
                previous[j + 1].max(current[j])
            };
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[short.len()] as usize
}

fn multiset_common(a: &[String], b: &[String]) -> usize {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for word in a {
        *counts.entry(word).or_default() += 1;
    }
    b.iter()
        .filter(|word| {
            counts.get_mut(word.as_str()).is_some_and(|n| {
                let had = *n > 0;
                *n = n.saturating_sub(1);
                had
            })
        })
        .count()
}

pub fn score(live: &[String], post_call: &[String]) -> Agreement {
    let total = live.len() + post_call.len();
    let (common, method) = if live.len().saturating_mul(post_call.len()) <= MAX_LCS_CELLS {
        (lcs_len(live, post_call), "lcs_dice")
    } else {
        (multiset_common(live, post_call), "multiset_dice")
    };
    Agreement {
        score: if total == 0 {
            1.0
        } else {
            2.0 * common as f64 / total as f64
        },
        method,
        live_words: live.len(),
        post_call_words: post_call.len(),
        common_words: common,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        normalise(text)
    }

    #[test]
    fn identical_text_scores_one_and_punctuation_is_ignored() {
        let a = score(
            &words("Hello, this is a test."),
            &words("hello this is a TEST"),
        );
        assert_eq!(a.score, 1.0);
        assert_eq!(a.common_words, 5);
    }

    #[test]
    fn differences_lower_the_score() {
        // 4 common of 5 + 4 words: 8/9.
        let a = score(
            &words("can you hear me clearly"),
            &words("can you hear clearly"),
        );
        assert!((a.score - 8.0 / 9.0).abs() < 1e-9, "{a:?}");
        // Order matters for the LCS: "b a" vs "a b" shares one word in order.
        let a = score(&words("a b"), &words("b a"));
        assert!((a.score - 0.5).abs() < 1e-9);
        assert_eq!(score(&words("x y"), &words("p q")).score, 0.0);
        assert_eq!(score(&[], &[]).score, 1.0);
        assert_eq!(score(&words("one"), &[]).score, 0.0);
    }

    #[test]
    fn multiset_method_matches_counts() {
        assert_eq!(multiset_common(&words("a a b"), &words("a b b")), 2);
    }
}
