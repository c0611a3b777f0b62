//! Pieces shared by every macro: error collection, attribute words, suggestions.

pub(crate) mod ctxt;
pub(crate) mod symbol;

/// Levenshtein distance, used to suggest the accepted word nearest to a misspelling.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// The accepted word closest to `word`, if it is close enough to be a likely typo.
pub(crate) fn nearest<'a>(word: &str, accepted: &[&'a str]) -> Option<&'a str> {
    accepted
        .iter()
        .map(|candidate| (distance(word, candidate), *candidate))
        .filter(|(d, candidate)| *d <= 2.max(candidate.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, candidate)| candidate)
}

/// "expected one of `a`, `b`, `c`" plus a "did you mean" line when one is near.
pub(crate) fn unknown_word_message(kind: &str, word: &str, accepted: &[&str]) -> String {
    let list = accepted
        .iter()
        .map(|a| format!("`{a}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut message = format!("unknown {kind} `{word}`; expected one of {list}");
    if let Some(near) = nearest(word, accepted) {
        message.push_str(&format!("\n\nhelp: did you mean `{near}`?"));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_nearest_accepted_word() {
        let accepted = ["primary_key", "generated", "rename", "skip", "json"];
        assert_eq!(nearest("primary_kye", &accepted), Some("primary_key"));
        assert_eq!(nearest("genrated", &accepted), Some("generated"));
        assert_eq!(nearest("banana", &accepted), None);
    }

    #[test]
    fn message_lists_every_accepted_word() {
        let m = unknown_word_message("field attribute", "skp", &["skip", "json"]);
        assert!(m.contains("`skip`, `json`"), "{m}");
        assert!(m.contains("did you mean `skip`?"), "{m}");
    }
}
