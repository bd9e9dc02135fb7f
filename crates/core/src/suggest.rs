//! "Did you mean …?" for misspelt keys in the configuration and the
//! declarations.

/// The candidate that `word` most likely misspells, if any: equal ignoring
/// case, within two edits (Levenshtein distance), or — a shortened or
/// lengthened key — a prefix of it or prefixed by it (three characters at
/// least). The fewest edits win; among equals, the first candidate.
pub fn closest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let word = word.to_lowercase();
    candidates
        .iter()
        .filter_map(|&c| {
            let distance = edit_distance(&word, c);
            let prefix = word.chars().count() >= 3 && (c.starts_with(&word) || word.starts_with(c));
            match distance {
                0..=2 => Some((distance, c)),
                _ if prefix => Some((distance, c)),
                _ => None,
            }
        })
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, c)| c)
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substituted = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substituted.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &[&str] = &["applications", "tasks"];

    #[test]
    fn typos_case_and_shortenings_find_their_key() {
        for (word, expected) in [
            ("application", Some("applications")),
            ("aplications", Some("applications")),
            ("Applications", Some("applications")),
            ("app", Some("applications")),
            ("task", Some("tasks")),
            ("taks", Some("tasks")),
            ("tasks_list", Some("tasks")),
            ("name", None),
            ("routes", None),
            ("ta", None),
        ] {
            assert_eq!(closest(word, KEYS), expected, "{word}");
        }
    }

    #[test]
    fn the_fewest_edits_win() {
        assert_eq!(closest("ttl", &["tls", "ttl"]), Some("ttl"));
        assert_eq!(closest("tll", &["ttl", "tls"]), Some("ttl"));
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
